//! The sharding table: which group serves each slot (the [`SlotMap`]) and
//! which nodes each group was created on, kept by group 1 (the metadata
//! group, docs/sharding.md); and in every group, what the group itself
//! does with each slot ([`SlotState`]), which decides each write when it
//! is applied. It changes only through the group's log, so every node
//! decides alike, and it is kept with the applied state (the disk engine's
//! note, the snapshots) as the client sessions are.

use std::collections::{BTreeMap, BTreeSet};

pub use kvstore_client::slot::SlotState;
use kvstore_client::slot::{slot_of, GroupId, SlotMap, SlotTable};
use kvstore_client::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{Member, Outcome, FIRST_GROUP};
use crate::storage::change::Change;
use crate::storage::op::WriteOp;

/// The most groups a cluster may have: each is an openraft instance with
/// its own log and engine on each of its nodes.
pub const MAX_GROUPS: usize = 1024;

/// The sharding table of a group's state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shards {
    /// Group 1's: which group serves each slot.
    map: SlotMap,
    /// Group 1's: every group but group 1 (whose members are group 1's
    /// membership), by id, with the nodes that run it now.
    groups: BTreeMap<GroupId, Placement>,
    /// This group's own state of each slot.
    own: SlotTable<SlotState>,
    /// Group 1's: the slot move under way, if any, and its last step done.
    moving: Option<Move>,
    /// Group 1's: each node's RESP address (`--resp-listen`) as the node
    /// recorded it, for Redis Cluster's redirects and `CLUSTER SLOTS`.
    doors: BTreeMap<u64, String>,
    /// Group 1's: the groups whose nodes changed since they were created.
    /// A new replica of one never initialises the group: it waits for the
    /// leader's log.
    changed: BTreeSet<GroupId>,
}

/// A table as written before groups could change nodes.
#[derive(Debug, Deserialize)]
pub struct ShardsWithoutChanges {
    map: SlotMap,
    groups: BTreeMap<GroupId, Placement>,
    own: SlotTable<SlotState>,
    moving: Option<Move>,
    doors: BTreeMap<u64, String>,
}

/// A table as written before it kept the nodes' RESP addresses.
#[derive(Debug, Deserialize)]
pub struct ShardsWithoutDoors {
    map: SlotMap,
    groups: BTreeMap<GroupId, Placement>,
    own: SlotTable<SlotState>,
    moving: Option<Move>,
}

impl From<ShardsWithoutChanges> for Shards {
    fn from(old: ShardsWithoutChanges) -> Shards {
        Shards {
            map: old.map,
            groups: old.groups,
            own: old.own,
            moving: old.moving,
            doors: old.doors,
            changed: BTreeSet::new(),
        }
    }
}

impl From<ShardsWithoutDoors> for Shards {
    fn from(old: ShardsWithoutDoors) -> Shards {
        Shards::from(ShardsWithoutChanges {
            map: old.map,
            groups: old.groups,
            own: old.own,
            moving: old.moving,
            doors: BTreeMap::new(),
        })
    }
}

/// A slot move as group 1 records it, so that group 1's next leader
/// finishes it after a crash of the coordinator (every step may be done
/// again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub first: u16,
    pub last: u16,
    pub from: GroupId,
    pub to: GroupId,
    /// The last step done.
    pub step: MoveStep,
    /// Being undone: asked for before the source released the slots.
    pub abort: bool,
}

/// The steps of a slot move, in order (docs/sharding.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MoveStep {
    /// Recorded; nothing done yet.
    Begun,
    /// The target takes the copy only.
    Importing,
    /// The source takes no more writes for the slots.
    Frozen,
    /// The pairs are in the target.
    Copied,
    /// The source no longer serves the slots.
    Released,
    /// The map names the target.
    Published,
    /// The target serves the slots; the source's copy is left to drop.
    Serving,
}

/// Where a group runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The nodes that run it. Until they change, its first voters: each
    /// initialises its replica with exactly these (openraft: identical
    /// first memberships are safe on several nodes).
    pub members: BTreeMap<u64, Member>,
}

impl Default for Shards {
    /// Group 1 of a cluster that is not sharded: it serves every slot.
    fn default() -> Shards {
        Shards {
            map: SlotMap::even(&[FIRST_GROUP]).expect("one group"),
            groups: BTreeMap::new(),
            own: SlotTable::new(SlotState::Serving),
            moving: None,
            doors: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }
}

/// What a group does with a change it applies, as its table decides.
pub enum Decided {
    /// It changed the table; the outcome.
    Changed(Outcome),
    /// It is refused; nothing is written.
    Refused(Outcome),
    /// It goes on to be resolved and written (a move's copy or clean-up as
    /// the plain write it is).
    Apply(Change),
}

fn refused(code: ErrorCode, message: String) -> Outcome {
    Outcome::Rejected {
        code: code as u32,
        message,
    }
}

impl Shards {
    /// The table a new replica of group `group` starts from: group 1
    /// serves every slot, any other none.
    pub fn of_group(group: GroupId) -> Shards {
        let own = match group {
            FIRST_GROUP => SlotState::Serving,
            _ => SlotState::Elsewhere,
        };
        Shards {
            own: SlotTable::new(own),
            ..Shards::default()
        }
    }

    /// This group's state of `slot`.
    pub fn state(&self, slot: u16) -> SlotState {
        self.own.get(slot)
    }

    /// Whether this group answers reads of `slot` with its data.
    pub fn answers(&self, slot: u16) -> bool {
        matches!(self.state(slot), SlotState::Serving | SlotState::Frozen)
    }

    /// The ranges of slots this table answers for.
    pub fn answered(&self) -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for slot in (0..kvstore_client::slot::SLOTS).filter(|s| self.answers(*s)) {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == slot => *last = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }

    /// Gives this group's slots `first..=last` the state `state`.
    pub fn set_state(&mut self, first: u16, last: u16, state: SlotState) -> Outcome {
        match self.own.set(first, last, state) {
            Ok(()) => Outcome::Stored,
            Err(e) => refused(ErrorCode::Malformed, e.to_string()),
        }
    }

    /// [`Shards::set_state`] only if every slot of `first..=last` is
    /// `expected` here, or already `state` (a step done again): a slot
    /// move's step that arrives late, from a coordinator since deposed or
    /// over a stalled link, is refused instead of undoing a newer one.
    pub fn set_state_if(
        &mut self,
        first: u16,
        last: u16,
        expected: SlotState,
        state: SlotState,
    ) -> Outcome {
        for slot in first..=last {
            let found = self.state(slot);
            if found != expected && found != state {
                let message = format!(
                    "slot {slot} is {found:?} in this group, not {expected:?} or {state:?}"
                );
                return refused(ErrorCode::ClusterFailed, message);
            }
        }
        self.set_state(first, last, state)
    }

    /// What this group does with `change`, in its log: a change of the
    /// table, a slot move's own write (only into slots in the state the
    /// move left them), or a client's write checked by [`Shards::admit`].
    pub fn decide(&mut self, change: Change) -> Decided {
        let checked = |result: Result<(), Outcome>, change| match result {
            Ok(()) => Decided::Apply(change),
            Err(refusal) => Decided::Refused(refusal),
        };
        match change {
            Change::AddGroup { members } => Decided::Changed(self.add_group(members)),
            Change::SetSlots { first, last, state } => {
                Decided::Changed(self.set_state(first, last, state))
            }
            Change::SetSlotsIf {
                first,
                last,
                expected,
                state,
            } => Decided::Changed(self.set_state_if(first, last, expected, state)),
            Change::Assign { first, last, group } => {
                Decided::Changed(self.assign(first, last, group))
            }
            Change::Moving(record) => Decided::Changed(self.record_move(record)),
            Change::Replicas {
                group,
                expected,
                members,
            } => Decided::Changed(self.set_replicas(group, &expected, members)),
            Change::Doors { node, resp } => {
                match resp {
                    Some(resp) => self.doors.insert(node, resp),
                    None => self.doors.remove(&node),
                };
                Decided::Changed(Outcome::Stored)
            }
            Change::Import { items } => {
                let keys = items.iter().map(|(key, _)| &key[..]);
                let result = self.admit_move(keys, SlotState::Importing);
                checked(result, Change::Write(WriteOp::BulkSet { items }))
            }
            Change::ImportTimed { items } => {
                let keys = items.iter().map(|(key, ..)| &key[..]);
                let result = self.admit_move(keys, SlotState::Importing);
                checked(result, Change::Write(WriteOp::SetExpiringMany { items }))
            }
            Change::Purge { keys } => {
                let result = self.admit_move(keys.iter().map(|key| &key[..]), SlotState::Elsewhere);
                checked(result, Change::Write(WriteOp::DeleteMany { keys }))
            }
            // The sweep removes only what has expired here, whatever the
            // state of its slots (a client cannot send it).
            change @ Change::Write(WriteOp::Expire { .. }) => Decided::Apply(change),
            change => checked(self.admit(&change), change),
        }
    }

    /// Whether this group may apply a client's write `change`: its keys
    /// all in slots the group serves, and, unless it serves every slot (a
    /// cluster that is not sharded), all in one slot. The refusal
    /// otherwise.
    pub fn admit(&self, change: &Change) -> Result<(), Outcome> {
        let serves_all = self.own.runs().len() == 1 && self.state(0) == SlotState::Serving;
        match serves_all {
            true => Ok(()),
            false => self.admit_keys(change.keys()),
        }
    }

    /// Whether a slot move's own write of `keys` may be applied: each in a
    /// slot in `state` here (the copy into `Importing` slots, the clean-up
    /// of `Elsewhere` ones).
    pub fn admit_move<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        state: SlotState,
    ) -> Result<(), Outcome> {
        for key in keys {
            let (slot, found) = (slot_of(key), self.state(slot_of(key)));
            if found != state {
                let message = format!("slot {slot} is {found:?} in this group, not {state:?}");
                return Err(refused(ErrorCode::ClusterFailed, message));
            }
        }
        Ok(())
    }

    /// The slot move under way, if any.
    pub fn moving(&self) -> Option<&Move> {
        self.moving.as_ref()
    }

    /// Records the move under way (its last step done), or that there is
    /// none. Steps only go forward, so a coordinator that lost the race
    /// to another cannot record an older step; a different move is
    /// refused while one is under way (one at a time); an abort is taken
    /// only before the release, and stops the steps; the record is cleared
    /// only after the last step or an abort.
    fn record_move(&mut self, record: Option<Move>) -> Outcome {
        let same =
            |a: &Move, b: &Move| (a.first, a.last, a.from, a.to) == (b.first, b.last, b.from, b.to);
        let allowed = match (&self.moving, &record) {
            (None, Some(next)) => next.step == MoveStep::Begun && !next.abort,
            (Some(current), Some(next)) if !same(current, next) => false,
            (Some(current), Some(next)) if current.abort => next == current,
            (Some(current), Some(next)) if next.abort => {
                next.step == current.step && current.step < MoveStep::Released
            }
            (Some(current), Some(next)) => next.step >= current.step,
            (Some(current), None) => current.step == MoveStep::Serving || current.abort,
            (None, None) => true,
        };
        if !allowed {
            let message = format!(
                "the slot move under way is {:?}, not {record:?}",
                self.moving
            );
            return refused(ErrorCode::ClusterFailed, message);
        }
        self.moving = record;
        Outcome::Stored
    }

    /// Gives slots `first..=last` to group `group` in the slot map.
    pub fn assign(&mut self, first: u16, last: u16, group: GroupId) -> Outcome {
        match self.map.assign(first, last, group) {
            Ok(()) => Outcome::Stored,
            Err(e) => refused(ErrorCode::Malformed, e.to_string()),
        }
    }

    fn admit_keys<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), Outcome> {
        let mut first_slot = None;
        for key in keys {
            let slot = slot_of(key);
            match *first_slot.get_or_insert(slot) == slot {
                true => {}
                false => {
                    return Err(refused(
                        ErrorCode::CrossSlot,
                        "the keys are in different slots".into(),
                    ))
                }
            }
            match self.state(slot) {
                SlotState::Serving => {}
                SlotState::Elsewhere => {
                    return Err(refused(
                        ErrorCode::Moved,
                        format!("slot {slot} is served by another group"),
                    ))
                }
                SlotState::Frozen | SlotState::Importing => {
                    return Err(refused(
                        ErrorCode::TryAgain,
                        format!("slot {slot} is moving between groups"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Which group serves each slot.
    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    /// Node `node`'s RESP address, if it recorded one.
    pub fn door(&self, node: u64) -> Option<&str> {
        self.doors.get(&node).map(String::as_str)
    }

    /// Every group but group 1, with where it runs.
    pub fn groups(&self) -> &BTreeMap<GroupId, Placement> {
        &self.groups
    }

    /// The first voters a new replica of group `group` initialises it
    /// with: its nodes, unless they changed since it was created (then a
    /// new replica joins through the leader's log).
    pub fn first_voters(&self, group: GroupId) -> Option<&BTreeMap<u64, Member>> {
        match self.changed.contains(&group) {
            true => None,
            false => self.groups.get(&group).map(|p| &p.members),
        }
    }

    /// From now on group `group` runs on `members` (a replica joining or
    /// leaving, `kvstore cluster move-replica`), if it runs on `expected`:
    /// a coordinator that read the nodes before another changed them
    /// changes nothing.
    pub fn set_replicas(
        &mut self,
        group: GroupId,
        expected: &BTreeMap<u64, Member>,
        members: BTreeMap<u64, Member>,
    ) -> Outcome {
        let Some(placement) = self.groups.get_mut(&group) else {
            return refused(
                ErrorCode::ClusterFailed,
                format!("there is no group {group}"),
            );
        };
        if members.is_empty() {
            return refused(ErrorCode::ClusterFailed, "a group needs a node".into());
        }
        if placement.members != *expected && placement.members != members {
            let message = format!("group {group}'s nodes changed meanwhile");
            return refused(ErrorCode::ClusterFailed, message);
        }
        if placement.members != members {
            placement.members = members;
            self.changed.insert(group);
        }
        Outcome::Stored
    }

    /// The groups other than group 1 that run on node `node`.
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

    #[test]
    fn a_group_that_changed_nodes_runs_on_the_new_ones_and_is_never_initialised_again() {
        let mut shards = Shards::default();
        assert_eq!(shards.add_group(members(&[1, 2, 3])), Outcome::Int(2));
        assert_eq!(shards.first_voters(2), Some(&members(&[1, 2, 3])));
        // Recording the same nodes changes nothing.
        let mut set = |expected: &[u64], now: &[u64]| {
            shards.set_replicas(2, &members(expected), members(now))
        };
        assert_eq!(set(&[1, 2, 3], &[1, 2, 3]), Outcome::Stored);
        assert_eq!(set(&[1, 2, 3], &[1, 2, 3, 4]), Outcome::Stored);
        // Sent again: already done.
        assert_eq!(set(&[1, 2, 3], &[1, 2, 3, 4]), Outcome::Stored);
        // Read before that change: refused.
        let stale = set(&[1, 2, 3], &[1, 2, 5]);
        assert!(matches!(stale, Outcome::Rejected { .. }), "{stale:?}");
        assert_eq!(set(&[1, 2, 3, 4], &[1, 2, 4]), Outcome::Stored);
        let on = |node| shards.groups_of(node).map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!((on(3), on(4), on(5)), (vec![], vec![2], vec![]));
        assert_eq!(shards.first_voters(2), None);
        for (group, nodes) in [(2, &[][..]), (3, &[1][..])] {
            let refused = shards.set_replicas(group, &members(&[1, 2, 4]), members(nodes));
            assert!(matches!(refused, Outcome::Rejected { .. }), "{group}");
        }
    }

    fn code(result: Result<(), Outcome>) -> Option<u32> {
        match result {
            Ok(()) => None,
            Err(Outcome::Rejected { code, .. }) => Some(code),
            Err(other) => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn a_group_applies_writes_only_to_the_slots_it_serves() {
        let key = |k: &'static str| (k.as_bytes(), slot_of(k.as_bytes()));
        let ((a, sa), (b, sb)) = (key("{user1}:a"), key("{user2}:b"));
        assert_ne!(sa, sb);
        // Group 1 of a cluster that is not sharded takes any keys at all.
        let all = Shards::of_group(FIRST_GROUP);
        let both = Change::Write(crate::storage::op::WriteOp::DeleteMany {
            keys: vec![a.to_vec().into(), b.to_vec().into()],
        });
        assert_eq!(code(all.admit(&both)), None);

        let mut group = Shards::of_group(FIRST_GROUP + 1);
        assert_eq!(code(group.admit_keys([a])), Some(ErrorCode::Moved as u32));
        assert_eq!(group.set_state(sa, sa, SlotState::Serving), Outcome::Stored);
        assert_eq!(code(group.admit_keys([a, a])), None);
        assert_eq!(code(group.admit_keys([b])), Some(ErrorCode::Moved as u32));
        let cross = group.admit(&both);
        assert_eq!(code(cross), Some(ErrorCode::CrossSlot as u32));
        for state in [SlotState::Frozen, SlotState::Importing] {
            group.set_state(sa, sa, state);
            assert_eq!(
                code(group.admit_keys([a])),
                Some(ErrorCode::TryAgain as u32)
            );
        }
        // Keyless writes (a flush) are the group's own business.
        assert_eq!(code(group.admit_keys([])), None);
        // So is the sweep's removal of its expired keys, across slots and
        // whatever their state (a client cannot send it).
        let sweep = crate::storage::op::WriteOp::Expire {
            keys: vec![a.to_vec().into(), b.to_vec().into()],
            now: 1,
        };
        assert!(matches!(
            group.decide(Change::Write(sweep)),
            Decided::Apply(_)
        ));
        let bad = group.set_state(5, 4, SlotState::Serving);
        assert!(matches!(bad, Outcome::Rejected { .. }));
    }
    #[test]
    fn a_move_s_copy_and_clean_up_write_only_slots_in_their_state() {
        let mut group = Shards::of_group(FIRST_GROUP + 1);
        let (key, slot) = (&b"k"[..], slot_of(b"k"));
        let copy = |group: &Shards| code(group.admit_move([key], SlotState::Importing));
        assert_eq!(copy(&group), Some(ErrorCode::ClusterFailed as u32));
        group.set_state(slot, slot, SlotState::Importing);
        assert_eq!(copy(&group), None);
        group.set_state(slot, slot, SlotState::Serving);
        assert_eq!(
            copy(&group),
            Some(ErrorCode::ClusterFailed as u32),
            "a served slot"
        );
        assert_eq!(group.assign(0, 99, 7), Outcome::Stored);
        assert_eq!(group.map().group_of(99), 7);
    }
    #[test]
    fn a_move_s_step_that_arrives_late_is_refused() {
        use SlotState::{Elsewhere, Importing, Serving};
        let mut target = Shards::of_group(FIRST_GROUP + 1);
        let step = |target: &mut Shards, expected, state| {
            let change = Change::SetSlotsIf {
                first: 0,
                last: 4095,
                expected,
                state,
            };
            match target.decide(change) {
                Decided::Changed(outcome) => code(match outcome {
                    Outcome::Stored => Ok(()),
                    refused => Err(refused),
                }),
                _ => panic!("not a change of the table"),
            }
        };
        // A move into the group: Elsewhere -> Importing -> Serving, each
        // step taken again after a crash.
        for (expected, state) in [(Elsewhere, Importing), (Importing, Serving)] {
            assert_eq!(step(&mut target, expected, state), None);
            assert_eq!(step(&mut target, expected, state), None, "done again");
        }
        // The first step, sent late by a coordinator that lost its place,
        // would leave the slots served by no group.
        let late = step(&mut target, Elsewhere, Importing);
        assert_eq!(late, Some(ErrorCode::ClusterFailed as u32));
        assert_eq!(target.state(0), Serving);
        assert_eq!(target.state(4095), Serving);
        // Half the range in another state is refused whole.
        target.set_state(0, 10, Elsewhere);
        assert_eq!(
            step(&mut target, Serving, Importing),
            Some(ErrorCode::ClusterFailed as u32)
        );
        assert_eq!(target.state(11), Serving);
    }
    #[test]
    fn a_recorded_move_only_goes_forward_one_at_a_time() {
        let mut table = Shards::default();
        let at = |step| Move {
            first: 0,
            last: 99,
            from: 1,
            to: 2,
            step,
            abort: false,
        };
        let stored = |outcome: Outcome| outcome == Outcome::Stored;
        assert!(
            !stored(table.record_move(Some(at(MoveStep::Frozen)))),
            "begins at Begun"
        );
        assert!(stored(table.record_move(Some(at(MoveStep::Begun)))));
        let other = Move {
            to: 3,
            ..at(MoveStep::Begun)
        };
        assert!(
            !stored(table.record_move(Some(other))),
            "one move at a time"
        );
        assert!(stored(table.record_move(Some(at(MoveStep::Copied)))));
        assert!(
            stored(table.record_move(Some(at(MoveStep::Copied)))),
            "a step again"
        );
        assert!(
            !stored(table.record_move(Some(at(MoveStep::Frozen)))),
            "never back"
        );
        assert!(!stored(table.record_move(None)), "cleared only when done");
        assert!(stored(table.record_move(Some(at(MoveStep::Serving)))));
        assert!(stored(table.record_move(None)));
        assert_eq!(table.moving(), None);

        // An abort: only before the release, and it stops the steps.
        let aborted = |step| Move {
            abort: true,
            ..at(step)
        };
        table.record_move(Some(at(MoveStep::Begun)));
        table.record_move(Some(at(MoveStep::Released)));
        assert!(
            !stored(table.record_move(Some(aborted(MoveStep::Released)))),
            "too late"
        );
        table = Shards::default();
        table.record_move(Some(at(MoveStep::Begun)));
        table.record_move(Some(at(MoveStep::Copied)));
        assert!(stored(table.record_move(Some(aborted(MoveStep::Copied)))));
        assert!(
            !stored(table.record_move(Some(aborted(MoveStep::Released)))),
            "stopped"
        );
        assert!(
            !stored(table.record_move(Some(at(MoveStep::Released)))),
            "stopped"
        );
        assert!(stored(table.record_move(None)), "cleared once undone");
    }
}
