//! Hash slots, exactly as Redis Cluster computes them: CRC16 (XMODEM) of
//! the key, or of its hash tag, mod 16,384. The hash tag is what lies
//! between the first `{` and the first `}` after it, when that is not
//! empty, so `{user:1}:name` and `{user:1}:mail` share a slot. A Redis
//! Cluster client computes the same slot for every key.

use crc::{Crc, CRC_16_XMODEM};
use serde::{Deserialize, Serialize};

/// The number of slots.
pub const SLOTS: u16 = 16_384;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The slot of `key`.
pub fn slot_of(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The part of `key` its slot is computed from, if it has a hash tag.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// A Raft group's id.
pub type GroupId = u64;

/// What a group does with a slot (docs/sharding.md). Only entries of the
/// group's own log change it, so a write is refused or applied alike on
/// every node, also when the log is applied again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    /// Tag 0. Another group's: writes are answered `Moved`.
    Elsewhere,
    /// Tag 1. This group's: writes are applied.
    Serving,
    /// Tag 2. Moving away: its data stays as it is at the entry that froze
    /// it, so a copy made from any later index holds every acknowledged
    /// write; writes are answered `TryAgain`.
    Frozen,
    /// Tag 3. Moving here: only the copy writes it; clients' writes are
    /// answered `TryAgain`.
    Importing,
}

/// Slots `first..=last`, all with the same `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRun<T> {
    /// The first slot of the run.
    pub first: u16,
    /// The last slot of the run, included.
    pub last: u16,
    /// What every slot of the run has.
    pub value: T,
}

/// Slots `first..=last`, all served by group `value`.
pub type SlotRange = SlotRun<GroupId>;

/// A value for every slot, kept as runs of equal values: which group
/// serves each slot ([`SlotMap`]), or what a group does with each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTable<T> {
    /// Sorted, contiguous, covering every slot; neighbours differ.
    runs: Vec<SlotRun<T>>,
}

/// Why a map could not be made or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// `first` after `last`, or past the last slot.
    #[error("slots {first}-{last} are not a range within 0-16383")]
    BadRange {
        /// The range's first slot as given.
        first: u16,
        /// The range's last slot as given.
        last: u16,
    },
    /// A map over no groups.
    #[error("a slot map needs at least one group")]
    NoGroups,
}

impl<T: Copy + PartialEq> SlotTable<T> {
    /// Every slot with `value`.
    pub fn new(value: T) -> SlotTable<T> {
        SlotTable {
            runs: vec![SlotRun {
                first: 0,
                last: SLOTS - 1,
                value,
            }],
        }
    }

    /// The runs, in slot order.
    pub fn runs(&self) -> &[SlotRun<T>] {
        &self.runs
    }

    /// The value of `slot` (any `u16`: taken mod [`SLOTS`]).
    pub fn get(&self, slot: u16) -> T {
        let slot = slot % SLOTS;
        let at = self.runs.partition_point(|r| r.last < slot);
        self.runs[at].value
    }

    /// Gives slots `first..=last` `value`.
    pub fn set(&mut self, first: u16, last: u16, value: T) -> Result<(), MapError> {
        if first > last || last >= SLOTS {
            return Err(MapError::BadRange { first, last });
        }
        let mut runs = Vec::with_capacity(self.runs.len() + 2);
        let cut = |r: &SlotRun<T>, first, last| SlotRun { first, last, ..*r };
        for r in &self.runs {
            if r.first < first {
                runs.push(cut(r, r.first, r.last.min(first - 1)));
            }
            if r.first <= first && first <= r.last {
                runs.push(SlotRun { first, last, value });
            }
            if r.last > last {
                runs.push(cut(r, r.first.max(last + 1), r.last));
            }
        }
        runs.dedup_by(|next, prev| {
            let same = prev.value == next.value;
            if same {
                prev.last = next.last;
            }
            same
        });
        self.runs = runs;
        Ok(())
    }
}

/// Which group serves each slot. Every change raises the version, so a
/// client that cached the map can tell an older map from a newer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMap {
    version: u64,
    table: SlotTable<GroupId>,
}

impl SlotMap {
    /// Every slot spread over `groups` in equal runs, in the order given, as
    /// `redis-cli --cluster create` spreads them over masters (three groups:
    /// 0-5460, 5461-10922, 10923-16383). Version 1.
    pub fn even(groups: &[GroupId]) -> Result<SlotMap, MapError> {
        let (&last_group, _) = groups.split_last().ok_or(MapError::NoGroups)?;
        let mut table = SlotTable::new(last_group);
        let per_group = f64::from(SLOTS) / groups.len() as f64;
        let mut first = 0u16;
        for (i, &group) in groups.iter().enumerate().take(groups.len() - 1) {
            let last = ((i + 1) as f64 * per_group - 1.0).round() as u16;
            table.set(first, last, group)?;
            first = last + 1;
        }
        Ok(SlotMap { version: 1, table })
    }

    /// The version: 1 for a new map, one more with every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The ranges, in slot order.
    pub fn ranges(&self) -> &[SlotRange] {
        self.table.runs()
    }

    /// The group that serves `slot` (any `u16`: taken mod [`SLOTS`]).
    pub fn group_of(&self, slot: u16) -> GroupId {
        self.table.get(slot)
    }

    /// The group that serves `key`.
    pub fn group_of_key(&self, key: &[u8]) -> GroupId {
        self.group_of(slot_of(key))
    }

    /// Gives slots `first..=last` to `group`, and raises the version.
    pub fn assign(&mut self, first: u16, last: u16, group: GroupId) -> Result<(), MapError> {
        self.table.set(first, last, group)?;
        self.version += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_keys_from_the_redis_cluster_specification() {
        // Examples from the Redis Cluster specification and CLUSTER KEYSLOT's
        // documentation.
        assert_eq!(
            slot_of(b"123456789"),
            0x31C3 % SLOTS,
            "the CRC16 check value"
        );
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"foo{hash_tag}"), 2515);
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn the_first_non_empty_braces_decide() {
        let slot = slot_of(b"user1000");
        assert_eq!(slot_of(b"{user1000}.following"), slot);
        assert_eq!(slot_of(b"foo{user1000}{bar}"), slot);
        // The first `{` counts, and the first `}` after it.
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        // Empty braces, or no closing one: the whole key.
        assert_eq!(
            slot_of(b"foo{}{bar}"),
            CRC16.checksum(b"foo{}{bar}") % SLOTS
        );
        assert_eq!(slot_of(b"foo{bar"), CRC16.checksum(b"foo{bar") % SLOTS);
    }

    #[test]
    fn an_even_map_spreads_slots_as_redis_cli_does() {
        let map = SlotMap::even(&[1, 2, 3]).unwrap();
        let runs: Vec<_> = map
            .ranges()
            .iter()
            .map(|r| (r.first, r.last, r.value))
            .collect();
        assert_eq!(runs, [(0, 5460, 1), (5461, 10922, 2), (10923, 16383, 3)]);
        assert_eq!(map.version(), 1);
        assert_eq!(map.group_of(5460), 1);
        assert_eq!(map.group_of(5461), 2);
        assert_eq!(map.group_of_key(b"somekey"), 3, "slot 11058");
        assert_eq!(SlotMap::even(&[]), Err(MapError::NoGroups));
        let one = SlotMap::even(&[7]).unwrap();
        assert_eq!(
            one.ranges(),
            [SlotRange {
                first: 0,
                last: 16383,
                value: 7
            }]
        );
    }

    #[test]
    fn assign_refuses_what_is_not_a_range() {
        let mut map = SlotMap::even(&[1, 2]).unwrap();
        assert!(map.assign(5, 4, 2).is_err());
        assert!(map.assign(0, SLOTS, 2).is_err());
        assert_eq!(map.version(), 1, "a refused change changes nothing");
    }

    /// Random reassignments against a plain slot -> group array.
    #[test]
    fn assign_agrees_with_a_slot_by_slot_model() {
        let mut map = SlotMap::even(&[1, 2, 3]).unwrap();
        let mut model: Vec<GroupId> = (0..SLOTS).map(|s| map.group_of(s)).collect();
        // A small xorshift: the test needs no crate and repeats exactly.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..500 {
            let first = next(u64::from(SLOTS)) as u16;
            let len = if round % 3 == 0 { next(4) } else { next(3000) } as u16;
            let last = first.saturating_add(len).min(SLOTS - 1);
            let group = 1 + next(4);
            map.assign(first, last, group).unwrap();
            model[usize::from(first)..=usize::from(last)].fill(group);
            assert_eq!(map.version(), 2 + round);
            for (slot, &group) in model.iter().enumerate() {
                assert_eq!(
                    map.group_of(slot as u16),
                    group,
                    "slot {slot}, round {round}"
                );
            }
            let ranges = map.ranges();
            assert_eq!(
                (ranges[0].first, ranges[ranges.len() - 1].last),
                (0, SLOTS - 1)
            );
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].last + 1, pair[1].first);
                assert_ne!(pair[0].value, pair[1].value, "neighbours are merged");
            }
        }
    }
}
