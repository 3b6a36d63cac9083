//! The handler thread: reads `struct uffd_msg`s and serves page faults (copy with readahead,
//! zero, 16-page zero fault-around) and `UFFD_EVENT_REMOVE` (pages discarded: zero on their
//! next fault).

use super::PageSource;
use super::{
    ioctl, Shared, UffdMsg, UffdioContinue, UffdioCopy, UffdioRange, UffdioZeropage,
    FAULT_AROUND_MAX_PAGES, PAGE, UFFDIO_CONTINUE, UFFDIO_CONTINUE_MODE_DONTWAKE, UFFDIO_COPY,
    UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_WAKE, UFFDIO_ZEROPAGE, UFFDIO_ZEROPAGE_MODE_DONTWAKE,
    UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE, UFFD_PAGEFAULT_FLAG_MINOR, UFFD_PAGEFAULT_FLAG_WRITE,
};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The handler thread: poll the uffd and the stop eventfd, serve messages until stopped.
pub(super) fn serve(
    fd: &OwnedFd,
    wake: i32,
    shared: &Shared,
    mut source: Box<dyn PageSource>,
    ranges: &[(u64, u64)],
) {
    let around = source.fault_around_pages().max(1).next_power_of_two() * PAGE;
    let mut removed: HashSet<u64> = HashSet::new();
    // The faulting page and, for a source with data, its readahead run (one UFFDIO_COPY).
    let mut run = vec![0u8; (FAULT_AROUND_MAX_PAGES * PAGE) as usize];
    let mut msgs = [UffdMsg::default(); 16];
    // Fault-around fills its block with one UFFDIO_COPY from this zeroed buffer: the pages are
    // then private and writable, so a later write takes no copy-on-write fault of the zero
    // page (UFFDIO_ZEROPAGE would map it read-only).
    let zeros = if around > PAGE {
        vec![0u8; (FAULT_AROUND_MAX_PAGES * PAGE) as usize]
    } else {
        Vec::new()
    };
    let mut ramp = Ramp {
        next: u64::MAX,
        window: around,
    };
    // Readahead of data pages: the window starts at the faulting page alone (a guest touching
    // a scattered subset reads about only what it touches) and doubles on in-order faults.
    let mut data_ramp = Ramp {
        next: u64::MAX,
        window: PAGE,
    };
    // Continue-ahead of minor faults, likewise from the faulting page alone.
    let mut minor_ramp = Ramp {
        next: u64::MAX,
        window: PAGE,
    };
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Wait::Stop = wait(fd, wake) {
            return;
        }
        // SAFETY: reads at most size_of_val(msgs) bytes into the live message array (the
        // descriptor is non-blocking).
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                std::mem::size_of_val(&msgs),
            )
        };
        if n <= 0 {
            continue;
        }
        let count = n as usize / std::mem::size_of::<UffdMsg>();
        for m in &msgs[..count] {
            let t0 = Instant::now();
            match m.event {
                UFFD_EVENT_PAGEFAULT if m.arg[0] & UFFD_PAGEFAULT_FLAG_MINOR != 0 => {
                    // The page is in the shared memory's page cache: map it (no copy), and
                    // while minor faults come in order, the run after it (continue-ahead).
                    let page = m.arg[1] & !(PAGE - 1);
                    let end = ranges
                        .iter()
                        .find(|&&(s, l)| page >= s && page - s < l)
                        .map_or(page + PAGE, |&(r0, rlen)| {
                            minor_ramp.block(page, PAGE, r0, r0 + rlen).1
                        });
                    let (outcome, mapped) = continue_run(fd, page, end - page);
                    minor_ramp.next = page + mapped.max(PAGE);
                    let ahead = (mapped / PAGE).saturating_sub(1);
                    let ns = t0.elapsed().as_nanos() as u64;
                    let mut s = match shared.stats.lock() {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                    s.faults += 1;
                    s.minor_faults += 1;
                    s.continue_ahead += ahead;
                    s.write_faults += (m.arg[0] & UFFD_PAGEFAULT_FLAG_WRITE != 0) as u64;
                    match outcome {
                        Served::Done => {
                            s.continues += 1;
                            s.record(ns);
                        }
                        Served::Raced => s.raced += 1,
                        Served::Failed => s.errors += 1,
                    }
                    drop(s);
                    if shared.track.load(Ordering::Relaxed) {
                        touched(shared).extend((0..=ahead).map(|i| page + i * PAGE));
                    }
                    if ahead > 0 {
                        wake_range(fd, page, mapped);
                    } else {
                        wake_page(fd, page);
                    }
                }
                UFFD_EVENT_PAGEFAULT => {
                    let page = m.arg[1] & !(PAGE - 1);
                    let write = m.arg[0] & UFFD_PAGEFAULT_FLAG_WRITE != 0;
                    let data = !removed.contains(&page) && {
                        let first = <&mut [u8; PAGE as usize]>::try_from(&mut run[..PAGE as usize]);
                        first.is_ok_and(|b| source.read(page, b))
                    };
                    let range = ranges
                        .iter()
                        .copied()
                        .find(|&(s, l)| page >= s && page - s < l);
                    // Fault-around (zero pages only), inside the page's registered range.
                    let block = (!data && around > PAGE)
                        .then(|| {
                            let (r0, rlen) = range?;
                            let (start, end) = ramp.block(page, around, r0, r0 + rlen);
                            (end - start > PAGE).then_some((start, end))
                        })
                        .flatten();
                    if !data && page == data_ramp.next {
                        // A hole (zero page) in an in-order stream keeps the stream going.
                        data_ramp.next = page + PAGE;
                    }
                    let mut ahead = 0;
                    let outcome = match block {
                        Some((start, end)) => {
                            let filled = zero_block(fd, start, &zeros[..(end - start) as usize]);
                            if (start..start + filled).contains(&page) {
                                ahead = filled / PAGE - 1;
                                Served::Done
                            } else {
                                // A page of the block before the faulting one is mapped (the
                                // pages before it were filled): fill from the faulting page on.
                                let more = zero_block(fd, page, &zeros[..(end - page) as usize]);
                                ahead = (filled + more) / PAGE;
                                if more > 0 {
                                    ahead -= 1;
                                    Served::Done
                                } else {
                                    zeropage(fd, page)
                                }
                            }
                        }
                        None if data => {
                            let pages = read_ahead(
                                source.as_mut(),
                                &mut data_ramp,
                                &removed,
                                page,
                                range,
                                &mut run,
                            );
                            let (outcome, filled) =
                                copy_run(fd, page, &run[..(pages * PAGE) as usize]);
                            data_ramp.next = page + filled.max(PAGE);
                            ahead = (filled / PAGE).saturating_sub(1);
                            outcome
                        }
                        None => zeropage(fd, page),
                    };
                    let ns = t0.elapsed().as_nanos() as u64;
                    let mut s = match shared.stats.lock() {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                    s.faults += 1;
                    s.missing_faults += 1;
                    if data {
                        s.read_ahead += ahead;
                    } else {
                        s.fault_around += ahead;
                    }
                    s.write_faults += write as u64;
                    s.source_reads += data as u64;
                    match outcome {
                        Served::Done => {
                            if data {
                                s.copies += 1;
                            } else {
                                s.zeropages += 1;
                            }
                            s.record(ns);
                        }
                        Served::Raced => s.raced += 1,
                        Served::Failed => s.errors += 1,
                    }
                    drop(s);
                    if shared.track.load(Ordering::Relaxed) {
                        // Every page made resident: the guest may write it without a fault.
                        let mut t = touched(shared);
                        t.push(page);
                        if data {
                            t.extend((1..=ahead).map(|i| page + i * PAGE));
                        }
                    }
                    // Wake the faulting thread only now, so a thread that saw its page also
                    // sees it counted (the copy / zeropage ran with MODE_DONTWAKE); with
                    // fault-around or readahead, every thread waiting in the block.
                    match block {
                        Some((start, end)) if ahead > 0 => wake_range(fd, start, end - start),
                        None if data && ahead > 0 => wake_range(fd, page, (ahead + 1) * PAGE),
                        _ => wake_page(fd, page),
                    }
                }
                UFFD_EVENT_REMOVE => {
                    let (start, end) = (m.arg[0], m.arg[1]);
                    let mut p = start & !(PAGE - 1);
                    let mut pages = 0;
                    let track = shared.track.load(Ordering::Relaxed);
                    let mut t = touched(shared);
                    while p < end {
                        removed.insert(p);
                        if track {
                            t.push(p);
                        }
                        p += PAGE;
                        pages += 1;
                    }
                    drop(t);
                    let mut s = match shared.stats.lock() {
                        Ok(s) => s,
                        Err(p) => p.into_inner(),
                    };
                    s.remove_events += 1;
                    s.removed_pages += pages;
                }
                _ => {}
            }
        }
    }
}

/// The fault-around window: the aligned `around` block of a faulting page; when faults come
/// in order (the page is the first one after the previous block), the block starts at the
/// page and doubles each time up to [`FAULT_AROUND_MAX_PAGES`], like the kernel's readahead,
/// so a sequential first touch of fresh memory takes a logarithmic number of round trips.
struct Ramp {
    /// The page after the previous block.
    next: u64,
    /// The current window, bytes.
    window: u64,
}

impl Ramp {
    /// The block `[start, end)` to fill for a fault on `page` in the range `[r0, r_end)`.
    fn block(&mut self, page: u64, around: u64, r0: u64, r_end: u64) -> (u64, u64) {
        let (start, end) = if page == self.next {
            self.window = (self.window * 2).min(FAULT_AROUND_MAX_PAGES * PAGE);
            (page, page.saturating_add(self.window).min(r_end))
        } else {
            self.window = around;
            let aligned = page & !(around - 1);
            (aligned.max(r0), aligned.saturating_add(around).min(r_end))
        };
        self.next = end;
        (start, end)
    }
}

pub(super) fn touched(shared: &Shared) -> std::sync::MutexGuard<'_, Vec<u64>> {
    match shared.touched.lock() {
        Ok(t) => t,
        Err(p) => p.into_inner(),
    }
}

enum Served {
    Done,
    Raced,
    Failed,
}

fn wake_range(fd: &OwnedFd, start: u64, len: u64) {
    let mut r = UffdioRange { start, len };
    let _ = ioctl(fd, UFFDIO_WAKE, &mut r);
}

/// `UFFDIO_COPY` of `zeros` to `[start, start + zeros.len())`: bytes filled from `start` on
/// (the kernel stops at the first page already mapped: `EEXIST`, or `EAGAIN` with a partial
/// count).
fn zero_block(fd: &OwnedFd, start: u64, zeros: &[u8]) -> u64 {
    let mut c = UffdioCopy {
        dst: start,
        src: zeros.as_ptr() as u64,
        len: zeros.len() as u64,
        mode: UFFDIO_COPY_MODE_DONTWAKE,
        copy: 0,
    };
    match ioctl(fd, UFFDIO_COPY, &mut c) {
        Ok(()) => zeros.len() as u64,
        Err(_) => (c.copy.max(0) as u64).min(zeros.len() as u64) & !(PAGE - 1),
    }
}

enum Wait {
    Ready,
    Stop,
}

/// Sleep in `poll` until the uffd has a message (or an error to retry) or `wake` is signalled.
fn wait(fd: &OwnedFd, wake: i32) -> Wait {
    let mut pfd = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two live pollfd structures.
    let rc = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
    if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
        return Wait::Stop;
    }
    if pfd[1].revents != 0 {
        Wait::Stop
    } else {
        Wait::Ready
    }
}

fn wake_page(fd: &OwnedFd, page: u64) {
    let mut r = UffdioRange {
        start: page,
        len: PAGE,
    };
    let _ = ioctl(fd, UFFDIO_WAKE, &mut r);
}

/// Pages to copy for a data fault on `page` (its data is in `run[..PAGE]`): the faulting page
/// plus the readahead the window allows, inside the page's registered range, stopping before a
/// discarded page (it is zero now, not the source's) and where the source has no data.
fn read_ahead(
    source: &mut dyn PageSource,
    ramp: &mut Ramp,
    removed: &HashSet<u64>,
    page: u64,
    range: Option<(u64, u64)>,
    run: &mut [u8],
) -> u64 {
    let Some((r0, rlen)) = range else {
        return 1;
    };
    let (_, end) = ramp.block(page, PAGE, r0, r0 + rlen);
    let want = ((end - page) / PAGE).min(run.len() as u64 / PAGE);
    let mut limit = (1..want)
        .find(|i| removed.contains(&(page + i * PAGE)))
        .unwrap_or(want);
    if limit > 1 {
        // Stop before a page already in place (served earlier): it is not read again.
        limit = 1 + absent_run(page + PAGE, limit - 1);
    }
    if limit <= 1 {
        return 1;
    }
    1 + source.read_ahead(
        page + PAGE,
        &mut run[PAGE as usize..(limit * PAGE) as usize],
    )
}

/// How many of the `pages` pages from `start` on are not resident (`mincore(2)`), counting
/// from `start` up to the first resident one; 0 if `mincore` fails.
fn absent_run(start: u64, pages: u64) -> u64 {
    let mut vec = vec![0u8; pages as usize];
    // SAFETY: `[start, start + pages * PAGE)` is inside a registered range (the caller clips
    // the run to it), page aligned; `vec` has one byte per page.
    let rc = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            (pages * PAGE) as usize,
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return 0;
    }
    vec.iter().take_while(|&&b| b & 1 == 0).count() as u64
}

/// `UFFDIO_COPY` of `data` (whole pages, the faulting page first) to `[page, page +
/// data.len())`: the outcome for the faulting page and the bytes filled from `page` on (the
/// kernel stops at the first page already mapped: a partial count with `EAGAIN`, then
/// `EEXIST`).
fn copy_run(fd: &OwnedFd, page: u64, data: &[u8]) -> (Served, u64) {
    let len = data.len() as u64;
    let mut done = 0;
    for _ in 0..16 {
        let mut c = UffdioCopy {
            dst: page + done,
            src: data.as_ptr() as u64 + done,
            len: len - done,
            mode: UFFDIO_COPY_MODE_DONTWAKE,
            copy: 0,
        };
        match ioctl(fd, UFFDIO_COPY, &mut c) {
            Ok(()) => return (Served::Done, len),
            Err(e) => {
                done += (c.copy.max(0) as u64).min(len - done) & !(PAGE - 1);
                match e.raw_os_error() {
                    Some(libc::EAGAIN) if done < len => continue,
                    Some(libc::EAGAIN) => return (Served::Done, len),
                    Some(libc::EEXIST) if done == 0 => return (Served::Raced, 0),
                    _ if done > 0 => return (Served::Done, done),
                    _ => return (Served::Failed, 0),
                }
            }
        }
    }
    (
        if done > 0 {
            Served::Done
        } else {
            Served::Failed
        },
        done,
    )
}

fn zeropage(fd: &OwnedFd, page: u64) -> Served {
    for _ in 0..16 {
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: page,
                len: PAGE,
            },
            mode: UFFDIO_ZEROPAGE_MODE_DONTWAKE,
            zeropage: 0,
        };
        match ioctl(fd, UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => return Served::Done,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Served::Raced,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(_) => break,
        }
    }
    Served::Failed
}

/// `UFFDIO_CONTINUE` of `[page, page + len)` (map the page-cache pages; the faulting thread is
/// woken by the caller): the outcome for the faulting page and the bytes mapped from `page` on.
/// The kernel stops at the first page already mapped (`EEXIST`) or no longer in the page
/// cache (`EFAULT`: e.g. a hole punched meanwhile; the woken thread then faults again,
/// missing), with a partial count (`EAGAIN`) if pages before it were mapped.
fn continue_run(fd: &OwnedFd, page: u64, len: u64) -> (Served, u64) {
    let mut tries = 0;
    loop {
        let mut c = UffdioContinue {
            range: UffdioRange { start: page, len },
            mode: UFFDIO_CONTINUE_MODE_DONTWAKE,
            mapped: 0,
        };
        match ioctl(fd, UFFDIO_CONTINUE, &mut c) {
            Ok(()) => return (Served::Done, len),
            Err(e) => {
                let done = (c.mapped.max(0) as u64).min(len) & !(PAGE - 1);
                if done > 0 {
                    return (Served::Done, done);
                }
                match e.raw_os_error() {
                    Some(libc::EEXIST) => return (Served::Raced, 0),
                    Some(libc::EAGAIN) if tries < 16 => tries += 1,
                    _ => return (Served::Failed, 0),
                }
            }
        }
    }
}
