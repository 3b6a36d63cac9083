//! The run-time limit: one thread per VM that, while a run is armed and past its deadline,
//! kicks the vCPU thread out of `KVM_RUN` with a signal (whose handler does nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

#[derive(Default)]
struct Shared {
    /// Deadline in ns after `epoch`; 0 = disarmed.
    deadline_ns: AtomicU64,
    /// pthread_t of the thread in KVM_RUN.
    thread: AtomicU64,
    timed_out: AtomicBool,
    stop: AtomicBool,
}

/// The watchdog of one VM.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    epoch: Instant,
    handle: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Install the (no-op) kick handler and start the thread.
    pub(crate) fn start() -> Result<Self, vmm_sys_util::errno::Error> {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)?;
        let shared = Arc::new(Shared::default());
        let epoch = Instant::now();
        let s = shared.clone();
        let handle = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                let d = s.deadline_ns.load(Ordering::SeqCst);
                if d != 0 && epoch.elapsed().as_nanos() as u64 >= d {
                    s.timed_out.store(true, Ordering::SeqCst);
                    let t = s.thread.load(Ordering::SeqCst) as libc::pthread_t;
                    // SAFETY: `t` is the thread that armed us and is inside `Vm::run` until it
                    // disarms (deadline 0) before returning; the signal has a no-op handler,
                    // so it only interrupts KVM_RUN.
                    unsafe { libc::pthread_kill(t, kick_signal()) };
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(Watchdog {
            shared,
            epoch,
            handle: Some(handle),
        })
    }

    /// Arm for a run from the calling thread, ending `timeout` from now.
    pub(crate) fn arm(&self, timeout: Duration) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.thread.store(me as u64, Ordering::SeqCst);
        self.shared.timed_out.store(false, Ordering::SeqCst);
        let d = (self.epoch.elapsed() + timeout).as_nanos().max(1) as u64;
        self.shared.deadline_ns.store(d, Ordering::SeqCst);
    }

    /// Disarm (before the run returns to the caller).
    pub(crate) fn disarm(&self) {
        self.shared.deadline_ns.store(0, Ordering::SeqCst);
    }

    /// True once the armed deadline has passed.
    pub(crate) fn timed_out(&self) -> bool {
        self.shared.timed_out.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.deadline_ns.store(0, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
