//! `SCAN` cursors.
//!
//! Redis clients treat a cursor as an opaque decimal number, but the store
//! walks keys in order and resumes after a key. So the server remembers, per
//! cursor number, the last key a page returned. The table is shared by all
//! connections (a client may continue a scan on another pooled connection)
//! and bounded: past [`MAX_CURSORS`] cursors or [`MAX_CURSOR_BYTES`] of keys
//! the oldest are forgotten, and continuing one answers "invalid cursor".
//!
//! What a scan guarantees: keys come in ascending byte order; a key present
//! from the first call to the last is returned exactly once; a key added or
//! removed meanwhile may or may not be. (Redis promises "at least once".)

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

/// Cursors remembered at most.
pub const MAX_CURSORS: usize = 100_000;
/// Bytes of remembered keys at most.
pub const MAX_CURSOR_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Cursors {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The last number handed out; 0 is never one (it means "start" and "done").
    last: u64,
    /// Cursor number to the key its page ended with.
    keys: HashMap<u64, Bytes>,
    /// Numbers oldest first, for eviction.
    order: VecDeque<u64>,
    /// Sum of the remembered keys' lengths.
    bytes: usize,
}

impl Cursors {
    /// A new cursor that resumes after `key`.
    pub fn save(&self, key: Bytes) -> u64 {
        let mut inner = self.inner.lock();
        inner.last += 1;
        let id = inner.last;
        inner.bytes += key.len();
        inner.keys.insert(id, key);
        inner.order.push_back(id);
        while inner.order.len() > MAX_CURSORS || inner.bytes > MAX_CURSOR_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(key) = inner.keys.remove(&old) {
                inner.bytes -= key.len();
            }
        }
        id
    }

    /// The key cursor `id` resumes after, if it is still remembered.
    pub fn resume(&self, id: u64) -> Option<Bytes> {
        self.inner.lock().keys.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_cursors_are_forgotten_first() {
        let cursors = Cursors::default();
        let first = cursors.save(Bytes::from_static(b"a"));
        assert_eq!(cursors.resume(first), Some(Bytes::from_static(b"a")));
        for _ in 0..MAX_CURSORS {
            cursors.save(Bytes::from_static(b"b"));
        }
        assert_eq!(cursors.resume(first), None);
        assert_eq!(cursors.resume(0), None);
        assert_eq!(cursors.inner.lock().keys.len(), MAX_CURSORS);
    }
}
