//! Where a client sends each key of a sharded cluster: to the leader of the
//! group that serves the key's slot, as the client last learned them from a
//! node's cluster status (docs/sharding.md). Learned when first needed: a
//! `NotLeader` or `Moved` answer to a keyed command asks for them, so a
//! client of a single server pays nothing, and a client of an unsharded
//! cluster one status request per leader change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::addr;
use crate::protocol::ClusterStatus;
use crate::slot::{GroupId, SlotTable};
use crate::{Error, ErrorCode};

/// The least time between two requests for the routes: a burst of
/// redirects asks once.
pub(crate) const REFETCH_PAUSE: Duration = Duration::from_millis(100);

/// The routes as last learned, and whether to learn them again.
#[derive(Default)]
pub(crate) struct Routes {
    /// The group of each slot; `None` where not known (the answering node
    /// does not run the group, or a `Moved` answer said it changed).
    groups: Option<SlotTable<Option<GroupId>>>,
    /// Each group's leader's native address.
    leaders: HashMap<GroupId, String>,
    /// An answer said the routes are out of date.
    stale: bool,
    /// When they were last asked for.
    asked: Option<Instant>,
}

impl Routes {
    /// The group of `slot` and its leader's address, if known.
    pub(crate) fn leader_of(&self, slot: u16) -> Option<(GroupId, String)> {
        let group = self.group_of(slot)?;
        Some((group, self.leaders.get(&group)?.clone()))
    }

    /// The group of `slot`, if known.
    pub(crate) fn group_of(&self, slot: u16) -> Option<GroupId> {
        self.groups.as_ref()?.get(slot)
    }

    /// Whether the routes show more than one group serving slots (never,
    /// for a single server): several groups, or slots of a group the
    /// answering node does not run. Multi-key writes must then stay
    /// within one slot.
    pub(crate) fn sharded(&self) -> bool {
        let Some(groups) = &self.groups else {
            return false;
        };
        let mut known = groups.runs().iter().map(|run| run.value);
        let first = known.next().flatten();
        first.is_none() || known.any(|group| group != first)
    }

    /// Makes them due: an answer (`CrossSlot` to a split write's part)
    /// showed them out of date.
    pub(crate) fn outdated(&mut self) {
        self.stale = true;
    }

    /// Whether to ask for the routes before the next call.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.stale && self.asked.is_none_or(|at| now - at >= REFETCH_PAUSE)
    }

    /// Notes that the routes are being asked for now (a failed request is
    /// not repeated before [`REFETCH_PAUSE`]).
    pub(crate) fn asking(&mut self, now: Instant) {
        self.asked = Some(now);
    }

    /// Takes in a node's view: the groups it runs, their slots, and the
    /// leaders it knows.
    pub(crate) fn learn(&mut self, status: &ClusterStatus) {
        let addrs: HashMap<u64, &str> = (status.members.iter())
            .map(|m| (m.id, m.addr.as_str()))
            .collect();
        let mut groups = SlotTable::new(None);
        self.leaders.clear();
        for group in &status.groups {
            for &(first, last) in &group.slots {
                // A node's table is whole and ordered: a bad range is skipped.
                let _ = groups.set(first, last, Some(group.id));
            }
            if let Some(addr) = group.leader.and_then(|id| addrs.get(&id)) {
                self.leaders.insert(group.id, addr.to_string());
            }
        }
        self.groups = Some(groups);
        self.stale = false;
    }

    /// After a call of a key in `slot` sent to the leader of group `sent_to` (`None`:
    /// to the client's target) failed with `error`: a `NotLeader` naming a
    /// leader updates the slot's group; a `Moved`, or a leader that could
    /// not be reached, makes the routes stale. The next call of the slot
    /// goes to the client's target until they are learned again.
    pub(crate) fn failed(&mut self, slot: u16, sent_to: Option<GroupId>, error: &Error) {
        let forget = |routes: &mut Routes| {
            if let Some(group) = sent_to {
                routes.leaders.remove(&group);
            }
            routes.stale = true;
        };
        match error {
            Error::Server { code, message } if *code == ErrorCode::NotLeader as u32 => {
                match (self.group_of(slot), redirect_named(message)) {
                    (Some(group), Some(leader)) => {
                        self.leaders.insert(group, leader);
                    }
                    _ => forget(self),
                }
            }
            Error::Server { code, .. } if *code == ErrorCode::Moved as u32 => {
                if let Some(groups) = &mut self.groups {
                    let _ = groups.set(slot, slot, None);
                }
                forget(self);
            }
            Error::Connect { .. } | Error::ConnectionLost(_) | Error::Timeout { .. }
                if sent_to.is_some() =>
            {
                forget(self)
            }
            _ => {}
        }
    }
}

/// The address a `NotLeader` or `Moved` message sends the client to
/// (`... leader at HOST:PORT`, `... served at HOST:PORT`).
pub(crate) fn redirect_named(message: &str) -> Option<String> {
    let (_, rest) =
        (message.split_once("leader at ")).or_else(|| message.split_once("served at "))?;
    addr::parse_target(rest.split_whitespace().next()?)
        .ok()
        .map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClusterMember, GroupView};
    use crate::slot::slot_of;

    fn member(id: u64) -> ClusterMember {
        ClusterMember {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            raft_addr: String::new(),
            voter: true,
            matched_index: None,
            resp_addr: None,
        }
    }

    fn group(id: u64, leader: Option<u64>, slots: Vec<(u16, u16)>) -> GroupView {
        GroupView {
            id,
            role: "follower".into(),
            term: 1,
            leader,
            applied_index: None,
            purged_index: None,
            voters: vec![1, 2, 3],
            keys: 0,
            slots,
        }
    }

    fn status(groups: Vec<GroupView>) -> ClusterStatus {
        ClusterStatus {
            node_id: 1,
            role: "follower".into(),
            term: 1,
            leader: Some(1),
            last_log_index: None,
            applied_index: None,
            pid: 0,
            members: vec![member(1), member(2), member(3)],
            groups,
            moving: None,
        }
    }

    fn server_error(code: ErrorCode, message: &str) -> Error {
        Error::Server {
            code: code as u32,
            message: message.into(),
        }
    }

    /// `{06S}` is in slot 0, `{b}` in 3300, `{c}` in 7365, `a` in 15495.
    fn learned() -> Routes {
        let mut routes = Routes::default();
        routes.learn(&status(vec![
            group(1, Some(1), vec![(8192, 16383)]),
            group(2, Some(2), vec![(0, 4095)]),
            group(3, None, vec![(4096, 8191)]),
        ]));
        routes
    }

    #[test]
    fn each_key_goes_to_its_group_s_leader_where_known() {
        let routes = learned();
        let to = |key: &str| routes.leader_of(slot_of(key.as_bytes()));
        assert_eq!(to("{06S}x"), Some((2, "127.0.0.1:7002".into())));
        assert_eq!(to("a"), Some((1, "127.0.0.1:7001".into())));
        assert_eq!(slot_of(b"{b}"), 3300);
        assert_eq!(to("{b}"), Some((2, "127.0.0.1:7002".into())));
        // Group 3 has no leader this node knows of.
        assert_eq!(slot_of(b"{c}"), 7365);
        assert_eq!(to("{c}"), None);
        assert!(!routes.due(Instant::now()));
    }

    #[test]
    fn routes_of_several_groups_are_sharded() {
        assert!(!Routes::default().sharded(), "nothing learned");
        let mut one = Routes::default();
        one.learn(&status(vec![group(1, Some(1), vec![(0, 16383)])]));
        assert!(!one.sharded(), "one group serves every slot");
        let mut partly = Routes::default();
        partly.learn(&status(vec![group(1, Some(1), vec![(0, 99)])]));
        assert!(partly.sharded(), "the other slots are another group's");
        assert!(learned().sharded());
    }

    #[test]
    fn nothing_is_routed_until_a_redirect_asks_for_the_routes() {
        let mut routes = Routes::default();
        let now = Instant::now();
        assert_eq!(routes.leader_of(slot_of(b"a")), None);
        assert!(!routes.due(now), "a single server is never asked");
        let not_leader = server_error(
            ErrorCode::NotLeader,
            "not the leader; leader at 127.0.0.1:7002",
        );
        routes.failed(slot_of(b"a"), None, &not_leader);
        assert!(routes.due(now));
        routes.asking(now);
        assert!(
            !routes.due(now + REFETCH_PAUSE / 2),
            "one request per pause"
        );
        assert!(routes.due(now + REFETCH_PAUSE));
    }

    #[test]
    fn a_named_leader_is_followed_without_asking_again() {
        let mut routes = learned();
        let said = "group 2: not the leader; leader at 127.0.0.1:7003";
        routes.failed(
            slot_of(b"{06S}x"),
            Some(2),
            &server_error(ErrorCode::NotLeader, said),
        );
        assert_eq!(
            routes.leader_of(slot_of(b"{b}")),
            Some((2, "127.0.0.1:7003".into()))
        );
        assert!(!routes.due(Instant::now()));
        // No leader named (an election): back to the target, and ask.
        let electing = server_error(ErrorCode::NotLeader, "not the leader; no leader known");
        routes.failed(slot_of(b"{06S}x"), Some(2), &electing);
        assert_eq!(routes.leader_of(slot_of(b"{06S}x")), None);
        assert!(routes.due(Instant::now()));
    }

    #[test]
    fn a_moved_slot_and_an_unreachable_leader_are_forgotten() {
        let mut routes = learned();
        let moved = server_error(ErrorCode::Moved, "slot 0 is served by another group");
        routes.failed(slot_of(b"{06S}x"), Some(2), &moved);
        assert_eq!(routes.leader_of(slot_of(b"{06S}x")), None, "the moved slot");
        assert_eq!(
            routes.leader_of(slot_of(b"a")),
            Some((1, "127.0.0.1:7001".into()))
        );
        assert!(routes.due(Instant::now()));

        let mut routes = learned();
        let lost = Error::ConnectionLost("reset".into());
        routes.failed(slot_of(b"a"), Some(1), &lost);
        assert_eq!(routes.leader_of(slot_of(b"a")), None);
        assert!(routes.due(Instant::now()));
        // A failure of the target is the target's business.
        let mut routes = learned();
        routes.failed(slot_of(b"a"), None, &Error::ConnectionLost("reset".into()));
        assert!(!routes.due(Instant::now()));
    }
}
