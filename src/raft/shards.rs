//! The sharding table: which group serves each slot (the [`SlotMap`]) and
//! which nodes each group was created on. Group 1's state machine keeps
//! it (group 1 is the metadata group, docs/sharding.md): it changes only
//! through group 1's log, so every node decides alike, and it is kept
//! with the applied state (the disk engine's note, the snapshots) as the
//! client sessions are.

use std::collections::BTreeMap;

use kvstore_client::slot::{GroupId, SlotMap};
use kvstore_client::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{Member, Outcome, FIRST_GROUP};

/// The most groups a cluster may have: each is an openraft instance with
/// its own log and engine on each of its nodes.
pub const MAX_GROUPS: usize = 1024;

/// The sharding table of group 1's state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shards {
    map: SlotMap,
    /// Every group but group 1 (whose members are group 1's membership),
    /// by id.
    groups: BTreeMap<GroupId, Placement>,
}

/// Where a group was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Its first voters; each initialises its replica with exactly these
    /// (openraft: identical first memberships are safe on several nodes).
    pub members: BTreeMap<u64, Member>,
}

impl Default for Shards {
    /// A cluster that is not sharded: group 1 serves every slot.
    fn default() -> Shards {
        Shards {
            map: SlotMap::even(&[FIRST_GROUP]).expect("one group"),
            groups: BTreeMap::new(),
        }
    }
}

impl Shards {
    /// Which group serves each slot.
    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    /// Every group but group 1, with where it was created.
    pub fn groups(&self) -> &BTreeMap<GroupId, Placement> {
        &self.groups
    }

    /// The groups other than group 1 that node `node` was created in.
    pub fn groups_of(&self, node: u64) -> impl Iterator<Item = (GroupId, &Placement)> {
        (self.groups.iter())
            .filter(move |(_, placement)| placement.members.contains_key(&node))
            .map(|(id, placement)| (*id, placement))
    }

    /// Records a new group on `members`, serving no slot yet; its id is
    /// the outcome.
    pub fn add_group(&mut self, members: BTreeMap<u64, Member>) -> Outcome {
        let refuse = |message: String| Outcome::Rejected {
            code: ErrorCode::ClusterFailed as u32,
            message,
        };
        if members.is_empty() {
            return refuse("a group needs at least one node".into());
        }
        if self.groups.len() + 1 >= MAX_GROUPS {
            return refuse(format!("a cluster has at most {MAX_GROUPS} groups"));
        }
        let id = self
            .groups
            .keys()
            .next_back()
            .map_or(FIRST_GROUP, |last| *last)
            + 1;
        self.groups.insert(id, Placement { members });
        Outcome::Int(id as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[u64]) -> BTreeMap<u64, Member> {
        (ids.iter()).map(|id| (*id, Member::default())).collect()
    }

    #[test]
    fn groups_get_ids_after_group_1_in_order_and_list_their_nodes() {
        let mut shards = Shards::default();
        assert_eq!(shards.map().group_of(16_383), FIRST_GROUP);
        assert_eq!(shards.add_group(members(&[1, 2, 3])), Outcome::Int(2));
        assert_eq!(shards.add_group(members(&[2, 3, 4])), Outcome::Int(3));
        let of = |node| shards.groups_of(node).map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(
            (of(1), of(3), of(4), of(5)),
            (vec![2], vec![2, 3], vec![3], vec![])
        );
        assert!(matches!(
            shards.add_group(BTreeMap::new()),
            Outcome::Rejected { .. }
        ));
        assert_eq!(shards.groups().len(), 2);
    }
}
