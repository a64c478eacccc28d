//! The explicit, non-atomic split of a multi-key write over a sharded
//! cluster's groups ([`crate::Client::bulk_set_split`],
//! [`crate::Client::delete_many_split`]). A sharded cluster takes a
//! `BulkSet` or `DeleteMany` atomically only when all its keys are in one
//! slot (`CrossSlot` otherwise); split, each part stays atomic, the whole
//! does not, and the caller gets each part's result. A part is the keys of
//! one slot (a group refuses keys of several slots even when it serves
//! them all, as Redis Cluster does), or the whole write where the server
//! takes it whole (a single server, an unsharded cluster).

use crate::slot::{slot_of, GroupId};
use crate::Error;

/// One part of a split write: the keys of one slot, or the whole write
/// where one part takes it, and what the server did with it.
#[derive(Debug)]
pub struct Part<T> {
    /// The slot of its keys; `None` for a whole write sent as one part.
    pub slot: Option<u16>,
    /// The group serving that slot, as the client's routes know it.
    pub group: Option<GroupId>,
    /// How many keys (or pairs) it held.
    pub keys: usize,
    /// Its answer: a part is atomic, stored (or removed) whole or not at all.
    pub result: Result<T, Error>,
}

/// Cuts `items` into the keys of each slot, in slot order. Items keep
/// their order within a part, so a key written twice keeps its last value.
pub(crate) fn by_slot<T>(items: Vec<T>, key: impl Fn(&T) -> &[u8]) -> Vec<(u16, Vec<T>)> {
    let mut parts: std::collections::BTreeMap<u16, Vec<T>> = Default::default();
    for item in items {
        parts.entry(slot_of(key(&item))).or_default().push(item);
    }
    parts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_cut_by_slot_keeping_their_order() {
        fn key<'b>(k: &'b &str) -> &'b [u8] {
            k.as_bytes()
        }
        // "{a}x" and "{a}y" share a slot; "{b}" has another.
        let (a, b) = (slot_of(b"a"), slot_of(b"b"));
        let parts = by_slot(vec!["{a}x", "{b}", "{a}y", "{a}x"], key);
        let mut expected = vec![(a, vec!["{a}x", "{a}y", "{a}x"]), (b, vec!["{b}"])];
        expected.sort_by_key(|(slot, _)| *slot);
        assert_eq!(parts, expected);
    }
}
