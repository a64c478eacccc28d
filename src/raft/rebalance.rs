//! `kvstore cluster rebalance`: which slot moves even out the groups'
//! shares of the keys, the bytes and the slots (docs/sharding.md).

use std::collections::{BTreeMap, BTreeSet};

use kvstore_client::slot::{GroupId, SLOTS};
use serde::{Deserialize, Serialize};

/// What one slot holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotLoad {
    pub keys: u64,
    /// Of its keys and values.
    pub bytes: u64,
}

/// A planned move of slots `first..=last` from group `from` to group `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub first: u16,
    pub last: u16,
    pub from: GroupId,
    pub to: GroupId,
}

/// How far from an even share a group may stay, as a fraction of that
/// share: redis-cli's `--cluster rebalance` default threshold.
const THRESHOLD: f64 = 0.02;

/// Moves that bring each of `groups` within [`THRESHOLD`] of an even share
/// where slots allow, given that `owner[slot]` serves each slot and
/// `loads[slot]` is what it holds. A slot weighs the mean of its shares of
/// the keys, of the bytes and of the slots ([`weights`]). Each move takes
/// a run of a donor's highest slots.
pub fn plan(owner: &[GroupId], loads: &[SlotLoad], groups: &[GroupId]) -> Vec<Planned> {
    let weight = weights(loads);
    let mut owner = owner.to_vec();
    let mut load: BTreeMap<GroupId, f64> = groups.iter().map(|g| (*g, 0.0)).collect();
    for (slot, group) in owner.iter().enumerate() {
        *load.entry(*group).or_default() += weight[slot];
    }
    let target = 1.0 / load.len() as f64;
    let mut stuck = BTreeSet::new();
    let mut moves: Vec<Planned> = Vec::new();
    // Each pass moves a run or marks a donor stuck: bounded by the slots.
    for _ in 0..2 * SLOTS as usize {
        let donor = (load.iter()).filter(|(g, _)| !stuck.contains(*g));
        let Some((&from, &most)) = donor.max_by(|a, b| a.1.total_cmp(b.1)) else {
            break;
        };
        let (&to, &least) = (load.iter())
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("groups");
        let (excess, deficit) = (most - target, target - least);
        let want = excess.min(deficit);
        if excess.max(deficit) <= THRESHOLD * target || want <= 0.0 || from == to {
            break;
        }
        let Some((first, last, moved)) = take(&owner, &weight, from, want) else {
            stuck.insert(from);
            continue;
        };
        owner[first as usize..=last as usize].fill(to);
        *load.get_mut(&from).expect("donor") -= moved;
        *load.get_mut(&to).expect("receiver") += moved;
        match moves.last_mut() {
            Some(prev) if (prev.from, prev.to) == (from, to) && last + 1 == prev.first => {
                prev.first = first
            }
            _ => moves.push(Planned {
                first,
                last,
                from,
                to,
            }),
        }
    }
    moves
}

/// Each slot's weight; they add up to 1. Each slot counts as holding one
/// key of the mean size more than it does, so that a few keys cannot
/// outweigh thousands of empty slots, and a cluster with no data is
/// spread by slots alone.
fn weights(loads: &[SlotLoad]) -> Vec<f64> {
    let slots = loads.len() as f64;
    let keys = loads.iter().map(|l| l.keys as f64).sum::<f64>();
    let bytes = loads.iter().map(|l| l.bytes as f64).sum::<f64>();
    let mean_bytes = if keys > 0.0 { bytes / keys } else { 1.0 };
    let (all_keys, all_bytes) = (keys + slots, bytes + slots * mean_bytes);
    (loads.iter())
        .map(|l| {
            let keys = (l.keys as f64 + 1.0) / all_keys;
            let bytes = (l.bytes as f64 + mean_bytes) / all_bytes;
            (1.0 / slots + keys + bytes) / 3.0
        })
        .collect()
}

/// The highest run of `from`'s slots that weighs at most `want` (skipping
/// slots heavier than that), and its weight.
fn take(owner: &[GroupId], weight: &[f64], from: GroupId, want: f64) -> Option<(u16, u16, f64)> {
    let fits = |slot: usize| owner[slot] == from && weight[slot] <= want;
    let last = (0..owner.len()).rev().find(|&slot| fits(slot))?;
    let (mut first, mut moved) = (last, weight[last]);
    while first > 0 && owner[first - 1] == from && moved + weight[first - 1] <= want {
        first -= 1;
        moved += weight[first];
    }
    Some((first as u16, last as u16, moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `owner` from runs of (last slot, group).
    fn owners(runs: &[(u16, GroupId)]) -> Vec<GroupId> {
        let mut owner = Vec::new();
        for &(last, group) in runs {
            owner.resize(last as usize + 1, group);
        }
        owner
    }

    fn shares(owner: &[GroupId], loads: &[SlotLoad], groups: &[GroupId]) -> Vec<f64> {
        let weight = weights(loads);
        (groups.iter())
            .map(|g| {
                (0..owner.len())
                    .filter(|&s| owner[s] == *g)
                    .map(|s| weight[s])
                    .sum()
            })
            .collect()
    }

    fn apply(owner: &mut [GroupId], moves: &[Planned]) {
        for m in moves {
            assert!(
                (m.first..=m.last).all(|s| owner[s as usize] == m.from),
                "{m:?}"
            );
            owner[m.first as usize..=m.last as usize].fill(m.to);
        }
    }

    #[test]
    fn an_empty_new_group_gets_a_quarter_of_the_slots_from_each_of_three() {
        let mut owner = owners(&[(5460, 1), (10922, 2), (16383, 3)]);
        let loads = vec![SlotLoad { keys: 1, bytes: 10 }; SLOTS as usize];
        let moves = plan(&owner, &loads, &[1, 2, 3, 4]);
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|m| m.to == 4), "{moves:?}");
        apply(&mut owner, &moves);
        for share in shares(&owner, &loads, &[1, 2, 3, 4]) {
            assert!((share - 0.25).abs() <= 0.25 * THRESHOLD, "{share}");
        }
    }

    #[test]
    fn keys_in_few_slots_are_spread_by_their_weight() {
        // Group 1 holds every key, in its last 100 slots.
        let mut owner = owners(&[(8191, 1), (16383, 2)]);
        let mut loads = vec![SlotLoad::default(); SLOTS as usize];
        for load in &mut loads[8092..8192] {
            *load = SlotLoad {
                keys: 100,
                bytes: 1000,
            };
        }
        let moves = plan(&owner, &loads, &[1, 2]);
        apply(&mut owner, &moves);
        let moved_keys = (8092..8192).filter(|&s| owner[s] == 2).count();
        assert!((30..=70).contains(&moved_keys), "{moved_keys} {moves:?}");
        let shares = shares(&owner, &loads, &[1, 2]);
        assert!((shares[0] - 0.5).abs() <= 0.5 * THRESHOLD, "{shares:?}");
    }

    #[test]
    fn one_key_does_not_outweigh_the_slots_of_a_nearly_empty_cluster() {
        // Group 2 holds the cluster's only key; group 4 is new.
        let mut owner = owners(&[(5460, 1), (10921, 2), (16383, 3)]);
        let mut loads = vec![SlotLoad::default(); SLOTS as usize];
        loads[10778] = SlotLoad { keys: 1, bytes: 9 };
        let moves = plan(&owner, &loads, &[1, 2, 3, 4]);
        apply(&mut owner, &moves);
        for group in [1, 2, 3, 4] {
            let slots = owner.iter().filter(|g| **g == group).count();
            assert!(
                (3_900..=4_300).contains(&slots),
                "group {group}: {slots} slots"
            );
        }
    }

    #[test]
    fn a_balanced_cluster_moves_nothing() {
        let owner = owners(&[(8191, 1), (16383, 2)]);
        let loads = vec![SlotLoad { keys: 3, bytes: 7 }; SLOTS as usize];
        assert_eq!(plan(&owner, &loads, &[1, 2]), vec![]);
        assert_eq!(plan(&owner, &loads, &[1]), vec![]);
    }

    #[test]
    fn a_slot_heavier_than_the_excess_stays_and_the_plan_ends() {
        // One slot of group 1 holds every key: no move can even it out.
        let owner = owners(&[(8191, 1), (16383, 2)]);
        let mut loads = vec![SlotLoad::default(); SLOTS as usize];
        loads[0] = SlotLoad {
            keys: 1000,
            bytes: 1 << 20,
        };
        let moves = plan(&owner, &loads, &[1, 2]);
        assert!(
            moves.iter().all(|m| m.first > 0 && m.from == 1),
            "{moves:?}"
        );
    }
}
