//! One key and its value in a single heap allocation, held by a thin
//! (8-byte) pointer, and the [`Address`] by which the store's deadline
//! index finds an entry without a copy of its key.
//!
//! The allocation is laid out as
//! `key length (u32 LE) | value length (u32 LE) | key | modified (u64 LE) |
//! created (u64 LE) | [deadline (u64 LE)] | value`: the two lengths make it
//! self-describing, so the pointer need not carry its length as a
//! `Box<[u8]>` does (8 bytes more in every B-tree slot). The key length's
//! top bit says whether a deadline (ms since the Unix epoch, after which the
//! key is gone: docs/design/expiry.md) follows the revisions. A key and a
//! value are each at most a frame (1 GiB), so both lengths fit and the bit
//! is free.
//!
//! This is the only unsafe code of the store. An entry is written once, in
//! [`Entry::new`], and only read until it is dropped; it never moves (only
//! the pointer does), so an [`Address`] stays valid for as long as its
//! entry lives. Its tests and the store's run under Miri:
//! `MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test -p kvstore
//! --lib -- storage::entry:: storage::store::`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ptr::NonNull;

/// Bytes in front of the key: its length and the value's.
const HEADER: usize = 8;

/// Set in the key length when a deadline follows the revisions.
const HAS_DEADLINE: u32 = 1 << 31;

/// Bytes of a deadline.
const DEADLINE_LEN: usize = 8;

/// Bytes of the two revisions.
const REVISIONS_LEN: usize = 16;

/// When a key was last written and when it came into being: the log
/// positions of those writes (docs/transactions.md). A key stored before
/// revisions were kept has 0 for both until it is written again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    pub modified: u64,
    pub created: u64,
}

impl Revisions {
    /// The revisions of a key written at `revision` over `old`, its entry
    /// if it has one. An entry whose deadline has passed but that the sweep
    /// has not removed yet still counts: the clock must not decide what a
    /// replay writes.
    pub fn written(old: Option<&Entry>, revision: u64) -> Revisions {
        Revisions {
            modified: revision,
            created: old.map_or(revision, |old| old.revisions().created),
        }
    }
}

/// A key, its value, revisions and deadline (see the module's layout).
///
/// Entries compare, and are looked up (through `Borrow<[u8]>`), by their key
/// alone, so a shard is a `BTreeSet<Entry>` that behaves as a map from key to
/// value.
pub struct Entry(NonNull<u8>);

// SAFETY: an entry owns its allocation alone, as a `Box<[u8]>` would, and
// nothing changes it after `Entry::new`.
unsafe impl Send for Entry {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Entry {}

impl Entry {
    /// An entry whose key is gone once `deadline` (ms since the epoch) has
    /// passed, if it has one.
    pub fn new(key: &[u8], value: &[u8], deadline: Option<u64>, revisions: Revisions) -> Entry {
        // The frame limit keeps both far below; a length that did not fit
        // would free the allocation with the wrong size.
        assert!(key.len() < HAS_DEADLINE as usize && value.len() <= u32::MAX as usize);
        let extra = REVISIONS_LEN + deadline.map_or(0, |_| DEADLINE_LEN);
        let mut buf = Vec::with_capacity(HEADER + key.len() + extra + value.len());
        let flag = deadline.map_or(0, |_| HAS_DEADLINE);
        buf.extend_from_slice(&(key.len() as u32 | flag).to_le_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(&revisions.modified.to_le_bytes());
        buf.extend_from_slice(&revisions.created.to_le_bytes());
        if let Some(at) = deadline {
            buf.extend_from_slice(&at.to_le_bytes());
        }
        buf.extend_from_slice(value);
        let whole: *mut [u8] = Box::into_raw(buf.into_boxed_slice());
        // A box's pointer is never null.
        Entry(NonNull::new(whole.cast::<u8>()).expect("a box is never null"))
    }

    /// The whole allocation.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `self.0` came from `Box::into_raw` of a slice laid out as
        // the module says, which this entry owns until it drops.
        unsafe { whole(self.0) }
    }

    /// Where this entry lives, for as long as it does.
    pub fn address(&self) -> Address {
        Address(self.0)
    }

    pub fn key(&self) -> &[u8] {
        key_of(self.bytes())
    }

    pub fn value(&self) -> &[u8] {
        let b = self.bytes();
        let start = key_end(b) + REVISIONS_LEN + deadline_len(b);
        &b[start..]
    }

    /// When the key is gone (ms since the epoch), if ever.
    pub fn deadline(&self) -> Option<u64> {
        let b = self.bytes();
        (deadline_len(b) > 0).then(|| u64_at(b, key_end(b) + REVISIONS_LEN))
    }

    pub fn revisions(&self) -> Revisions {
        let b = self.bytes();
        let at = key_end(b);
        Revisions {
            modified: u64_at(b, at),
            created: u64_at(b, at + 8),
        }
    }

    /// Whether the key is gone at `now_ms`: its deadline is at or before it.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.deadline().is_some_and(|at| at <= now_ms)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let len = self.bytes().len();
        let whole = std::ptr::slice_from_raw_parts_mut(self.0.as_ptr(), len);
        // SAFETY: the pointer and length are those `Entry::new` took from
        // `Box::into_raw`, and the entry is dropped once.
        drop(unsafe { Box::from_raw(whole) });
    }
}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// Where an entry lives: the store's deadline index holds `(deadline,
/// address)` instead of a copy of the key. Addresses compare as numbers;
/// reading the key behind one is up to its holder to make safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address(NonNull<u8>);

// SAFETY: an address is read through only under the rules of
// `Address::key`, by whoever holds the entry's owner (the shard's lock).
unsafe impl Send for Address {}
// SAFETY: as above.
unsafe impl Sync for Address {}

impl Address {
    /// Below every entry's address (no allocation starts at 1): the bound
    /// of a range of the index that takes every address of a deadline.
    pub const LOWEST: Address = Address(NonNull::dangling());

    /// The key of the entry at this address.
    ///
    /// # Safety
    /// The entry must be alive for all of `'a`: not dropped, as when the
    /// caller holds a shared borrow of the set that owns it.
    pub unsafe fn key<'a>(self) -> &'a [u8] {
        // SAFETY: the caller keeps the entry, and so its allocation, alive.
        key_of(unsafe { whole(self.0) })
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Address) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Address) -> Ordering {
        self.0.as_ptr().addr().cmp(&other.0.as_ptr().addr())
    }
}

/// The whole allocation of the entry at `at`.
///
/// # Safety
/// `at` must be a live entry's pointer, and the entry outlive `'a`.
unsafe fn whole<'a>(at: NonNull<u8>) -> &'a [u8] {
    // SAFETY: every entry starts with its header, and its length follows
    // from it (`Entry::new`); the caller keeps it alive.
    unsafe {
        let header = std::slice::from_raw_parts(at.as_ptr(), HEADER);
        std::slice::from_raw_parts(at.as_ptr(), total_len(header))
    }
}

/// An entry's length from its header.
fn total_len(header: &[u8]) -> usize {
    key_end(header) + REVISIONS_LEN + deadline_len(header) + u32_at(header, 4) as usize
}

/// The key of an entry's allocation `b`.
fn key_of(b: &[u8]) -> &[u8] {
    &b[HEADER..key_end(b)]
}

/// Where the key ends.
fn key_end(b: &[u8]) -> usize {
    HEADER + (u32_at(b, 0) & !HAS_DEADLINE) as usize
}

/// The deadline's length: 0 if there is none.
fn deadline_len(b: &[u8]) -> usize {
    match u32_at(b, 0) & HAS_DEADLINE {
        0 => 0,
        _ => DEADLINE_LEN,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let bytes: [u8; 8] = b[at..at + 8].try_into().unwrap_or_default();
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn revised(modified: u64) -> Revisions {
        Revisions {
            modified,
            created: 1,
        }
    }

    /// Revisions ride in every entry, a deadline only when there is one,
    /// and lookups by key find either kind.
    #[test]
    fn an_entry_carries_its_revisions_and_a_deadline_only_when_it_has_one() {
        let revised = Revisions {
            modified: 9,
            created: 4,
        };
        let plain = Entry::new(b"user:1", b"ann", None, revised);
        assert_eq!(plain.bytes().len(), HEADER + 6 + REVISIONS_LEN + 3);
        assert_eq!((plain.key(), plain.value()), (&b"user:1"[..], &b"ann"[..]));
        assert_eq!((plain.deadline(), plain.revisions()), (None, revised));
        assert!(!plain.expired(u64::MAX));

        let at = 1_764_950_400_000;
        let expiring = Entry::new(b"session:9", b"", Some(at), revised);
        let len = HEADER + 9 + REVISIONS_LEN + DEADLINE_LEN;
        assert_eq!(expiring.bytes().len(), len);
        assert_eq!(
            (expiring.key(), expiring.value()),
            (&b"session:9"[..], &b""[..])
        );
        assert_eq!(
            (expiring.deadline(), expiring.revisions()),
            (Some(at), revised)
        );
        assert!(!expiring.expired(at - 1));
        assert!(expiring.expired(at));

        // A value that looks like a deadline stays a value.
        let tricky = Entry::new(b"k", &at.to_le_bytes(), None, Revisions::default());
        assert_eq!(
            (tricky.deadline(), tricky.value()),
            (None, &at.to_le_bytes()[..])
        );

        let empty = Entry::new(b"", b"", None, Revisions::default());
        assert_eq!((empty.key(), empty.value()), (&b""[..], &b""[..]));
        assert_eq!(empty.bytes().len(), HEADER + REVISIONS_LEN);

        let map: BTreeSet<Entry> = [plain, expiring, tricky].into_iter().collect();
        let found = |key: &[u8]| map.get(key).map(|e| e.value().to_vec());
        assert_eq!(found(b"session:9"), Some(Vec::new()));
        assert_eq!(found(b"user:1"), Some(b"ann".to_vec()));
        assert_eq!(found(b"k"), Some(at.to_le_bytes().to_vec()));
    }

    #[test]
    fn an_address_reads_the_key_while_the_set_moves_its_entries() {
        let mut set = BTreeSet::new();
        let mut index = BTreeSet::new();
        for i in 0..200u32 {
            let key = format!("key{i:03}");
            let entry = Entry::new(
                key.as_bytes(),
                &i.to_le_bytes(),
                Some(u64::from(i)),
                revised(1),
            );
            index.insert((u64::from(i % 7), entry.address()));
            // Inserting splits and shifts the B-tree's nodes: the entries'
            // pointers move, their allocations do not.
            set.insert(entry);
        }
        let start = (3, Address::LOWEST);
        for &(deadline, address) in index.range(start..(4, Address::LOWEST)) {
            // SAFETY: `set` owns every indexed entry and is borrowed here.
            let key = unsafe { address.key() };
            let entry = set.get(key).expect("an indexed key is in the set");
            assert_eq!(
                u64::from(u32::from_le_bytes(entry.value().try_into().unwrap())) % 7,
                deadline
            );
        }
        // Taken out and dropped with its index entry first, as the store does.
        let gone = set.take(&b"key010"[..]).unwrap();
        assert!(index.remove(&(10 % 7, gone.address())));
        drop(gone);
        assert_eq!((set.len(), index.len()), (199, 199));
    }
}
