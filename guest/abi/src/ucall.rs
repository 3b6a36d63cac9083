//! Ucalls: binary records the guest SDK sends to the host test (`sync!`, `guest_assert!`,
//! `done()`, an unexpected exception), after KVM selftests' `ucall` (ucall_common.c), but
//! carried by one [`crate::Call::Ucall`] hypercall: `args[0]` = GVA of a [`Record`],
//! `args[1]` = its size in bytes ([`RECORD_BYTES`]).
//!
//! The host reads the bytes and decodes them with [`Record::from_bytes`]; every field is
//! checked (kind known, counts and lengths within their arrays), so a hostile record is an
//! `Inval` status, never a panic.

/// [`Record::kind`]: the guest reached a sync point; `vals` are its arguments. It waits for
/// the host to run it again.
pub const SYNC: u32 = 0;
/// [`Record::kind`]: a guest assertion failed: `file`, `line`, `msg` (the condition or the
/// message), `vals` (for `guest_assert_eq!`: left, right). The guest stops.
pub const ASSERT: u32 = 1;
/// [`Record::kind`]: the guest finished its test. It stops.
pub const DONE: u32 = 2;
/// [`Record::kind`]: an exception no handler expected: `vals` = vector, error code, CR2,
/// RIP; `msg` = a description. The guest stops.
pub const FAULT: u32 = 3;

/// Most values in one record.
pub const MAX_VALS: usize = 6;
/// Bytes of [`Record::file`].
pub const FILE_BYTES: usize = 128;
/// Bytes of [`Record::msg`].
pub const MSG_BYTES: usize = 256;
/// Size of a [`Record`] in bytes.
pub const RECORD_BYTES: usize = 24 + 8 * MAX_VALS + FILE_BYTES + MSG_BYTES;

/// One ucall record (repr(C), no implicit padding).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// [`SYNC`], [`ASSERT`], [`DONE`] or [`FAULT`].
    pub kind: u32,
    /// Source line (assertions), else 0.
    pub line: u32,
    /// Valid entries of `vals`.
    pub nvals: u32,
    /// Valid bytes of `file` (UTF-8).
    pub file_len: u32,
    /// Valid bytes of `msg` (UTF-8).
    pub msg_len: u32,
    /// Zero.
    pub pad: u32,
    /// Values.
    pub vals: [u64; MAX_VALS],
    /// Source file (assertions).
    pub file: [u8; FILE_BYTES],
    /// Message.
    pub msg: [u8; MSG_BYTES],
}

impl Record {
    /// An empty record of `kind`.
    pub const fn new(kind: u32) -> Record {
        Record {
            kind,
            line: 0,
            nvals: 0,
            file_len: 0,
            msg_len: 0,
            pad: 0,
            vals: [0; MAX_VALS],
            file: [0; FILE_BYTES],
            msg: [0; MSG_BYTES],
        }
    }

    /// Set `file` (truncated to [`FILE_BYTES`] at a UTF-8 boundary).
    pub fn set_file(&mut self, s: &str) {
        self.file_len = copy_str(&mut self.file, s) as u32;
    }

    /// Set `msg` (truncated to [`MSG_BYTES`] at a UTF-8 boundary).
    pub fn set_msg(&mut self, s: &str) {
        self.msg_len = copy_str(&mut self.msg, s) as u32;
    }

    /// Append a value (ignored past [`MAX_VALS`]).
    pub fn push(&mut self, v: u64) {
        if (self.nvals as usize) < MAX_VALS {
            self.vals[self.nvals as usize] = v;
            self.nvals += 1;
        }
    }

    /// The valid values.
    pub fn values(&self) -> &[u64] {
        &self.vals[..(self.nvals as usize).min(MAX_VALS)]
    }

    /// The file name (lossy: invalid UTF-8 gives the valid prefix).
    pub fn file_str(&self) -> &str {
        prefix_str(&self.file[..(self.file_len as usize).min(FILE_BYTES)])
    }

    /// The message (as `file_str`).
    pub fn msg_str(&self) -> &str {
        prefix_str(&self.msg[..(self.msg_len as usize).min(MSG_BYTES)])
    }

    /// The record as bytes (for the guest to send).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: Record is repr(C) made of integers and byte arrays with no padding (see
        // the layout test), so all RECORD_BYTES bytes are initialised.
        unsafe { core::slice::from_raw_parts(self as *const Record as *const u8, RECORD_BYTES) }
    }

    /// Decode `bytes` (the host's copy of guest memory); `None` unless it is exactly one
    /// record with a known kind and counts within bounds.
    pub fn from_bytes(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_BYTES {
            return None;
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let mut r = Record::new(u32_at(0));
        r.line = u32_at(4);
        r.nvals = u32_at(8);
        r.file_len = u32_at(12);
        r.msg_len = u32_at(16);
        if r.kind > FAULT
            || r.nvals as usize > MAX_VALS
            || r.file_len as usize > FILE_BYTES
            || r.msg_len as usize > MSG_BYTES
        {
            return None;
        }
        for (i, v) in r.vals.iter_mut().enumerate() {
            let o = 24 + 8 * i;
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[o..o + 8]);
            *v = u64::from_le_bytes(w);
        }
        let f = 24 + 8 * MAX_VALS;
        r.file.copy_from_slice(&bytes[f..f + FILE_BYTES]);
        r.msg
            .copy_from_slice(&bytes[f + FILE_BYTES..f + FILE_BYTES + MSG_BYTES]);
        Some(r)
    }
}

fn copy_str(dst: &mut [u8], s: &str) -> usize {
    let mut n = s.len().min(dst.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    n
}

fn prefix_str(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        assert_eq!(core::mem::size_of::<Record>(), RECORD_BYTES);
        let mut r = Record::new(ASSERT);
        r.line = 42;
        r.set_file("tests/x.rs");
        r.set_msg("a == b");
        r.push(1);
        r.push(u64::MAX);
        let d = Record::from_bytes(r.as_bytes()).expect("decodes");
        assert_eq!(d, r);
        assert_eq!(
            (d.file_str(), d.msg_str(), d.values()),
            ("tests/x.rs", "a == b", &[1, u64::MAX][..])
        );
    }

    #[test]
    fn hostile_records_are_refused() {
        let mut r = Record::new(SYNC);
        r.nvals = 7;
        assert!(Record::from_bytes(r.as_bytes()).is_none());
        let mut r = Record::new(9);
        assert!(Record::from_bytes(r.as_bytes()).is_none());
        r.kind = DONE;
        r.msg_len = 1000;
        assert!(Record::from_bytes(r.as_bytes()).is_none());
        assert!(Record::from_bytes(&r.as_bytes()[1..]).is_none());
    }
}
