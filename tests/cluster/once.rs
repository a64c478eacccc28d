//! Exactly-once writes: a write of a client session sent again, to the same
//! leader, to a new leader after the old one was killed, and after the
//! session's outcomes went into a snapshot, is answered with its first
//! outcome and applied once. A server running alone has no sessions.

use kvstore_client::Command;

use super::*;

/// `Incr n` as write `seq` of `session`.
fn incr_once(session: u64, seq: u64) -> Command {
    Command::Once {
        session,
        seq,
        acked: 0,
        command: Box::new(cmd_incr("n")),
    }
}

/// The inner reply of an `Indexed` reply.
fn unwrapped(reply: Option<Reply>) -> Reply {
    match reply {
        Some(Reply::Indexed { reply, .. }) => *reply,
        other => panic!("not an Indexed reply: {other:?}"),
    }
}

#[test]
fn a_session_write_sent_again_is_applied_once_through_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut servers, leader) = start_cluster(dir.path());
    let session = match try_call(leader.addr, Command::OpenSession) {
        Some(Reply::Int(id)) => id as u64,
        other => panic!("OpenSession: {other:?}"),
    };
    let first = unwrapped(try_call(leader.addr, incr_once(session, 1)));
    assert_eq!(first, Reply::Int(1));
    let again = unwrapped(try_call(leader.addr, incr_once(session, 1)));
    assert_eq!(
        again,
        Reply::Int(1),
        "a resend is answered as the first was"
    );
    // More than a snapshot's worth of entries after it (every 100).
    for seq in 2..=150 {
        let reply = unwrapped(try_call(leader.addr, incr_once(session, seq)));
        assert_eq!(reply, Reply::Int(seq as i64));
    }

    servers[(leader.id - 1) as usize].take().unwrap().kill9();
    let survivors: Vec<Spec> = (nodes.iter())
        .filter(|n| n.id != leader.id)
        .cloned()
        .collect();
    let new_leader = wait_for_leader(&survivors);
    for seq in [1, 150] {
        let resent = unwrapped(try_call(new_leader.addr, incr_once(session, seq)));
        assert_eq!(resent, Reply::Int(seq as i64), "write {seq} resent");
    }
    assert_eq!(
        try_call(new_leader.addr, cmd::get("n")),
        Some(Reply::Value(Some("150".into())))
    );
    // A session nobody opened.
    match try_call(new_leader.addr, incr_once(session + 1000, 1)) {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::SessionExpired as u32),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_running_alone_has_no_sessions_and_its_clients_write_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db"), &[]);
    match try_call(server.addr, Command::OpenSession) {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::ClusterFailed as u32),
        other => panic!("{other:?}"),
    }
    let client = kvstore_client::Client::connect(server.addr.to_string()).unwrap();
    common::runtime().block_on(async {
        assert_eq!(client.incr("n", 2).await.unwrap(), 2);
        assert_eq!(client.incr("n", 2).await.unwrap(), 4);
    });
}

/// The history of a `Set` whose answer was lost and that was sent again
/// after another client's `Set`, with reads between, as the checker sees
/// it: outside a session the old value comes back (not linearizable);
/// inside one the resend changes nothing.
#[test]
fn a_resent_set_brings_an_old_value_back_only_outside_a_session() {
    use super::checker::{self, Kind, Op, Verdict};

    let dir = tempfile::tempdir().unwrap();
    let (_nodes, _servers, leader) = start_cluster(dir.path());
    let session = match try_call(leader.addr, Command::OpenSession) {
        Some(Reply::Int(id)) => id as u64,
        other => panic!("OpenSession: {other:?}"),
    };
    for in_session in [false, true] {
        let key = format!("resent-{in_session}");
        let first_set = |value: &str| -> Command {
            let set = cmd::set(&key, value);
            match in_session {
                true => Command::Once {
                    session,
                    seq: 1,
                    acked: 0,
                    command: Box::new(set),
                },
                false => set,
            }
        };
        let mut clock = 0;
        let mut tick = || {
            clock += 1;
            clock
        };
        let mut ops = Vec::new();
        let read = |tick: &mut dyn FnMut() -> u64| {
            let call = tick();
            let seen = match try_call(leader.addr, cmd::get(&key)) {
                Some(Reply::Value(v)) => v.map(|v| u64::from(v[1] - b'0')),
                other => panic!("{other:?}"),
            };
            Op {
                kind: Kind::Read(seen),
                call,
                ret: Some(tick()),
            }
        };
        // A's Set of v1 (its answer counts as lost: A sends it again).
        let a_call = tick();
        assert!(try_call(leader.addr, first_set("v1")).is_some());
        ops.push(read(&mut tick));
        // B's Set of v2.
        let b_call = tick();
        assert_eq!(try_call(leader.addr, cmd::set(&key, "v2")), Some(Reply::Ok));
        ops.push(Op {
            kind: Kind::Write(2),
            call: b_call,
            ret: Some(tick()),
        });
        ops.push(read(&mut tick));
        // A's resend, answered this time.
        assert!(try_call(leader.addr, first_set("v1")).is_some());
        ops.push(Op {
            kind: Kind::Write(1),
            call: a_call,
            ret: Some(tick()),
        });
        ops.push(read(&mut tick));
        let verdict = checker::check(&ops, 100_000);
        match in_session {
            true => assert_eq!(verdict, Verdict::Linearizable, "{ops:?}"),
            false => assert!(
                matches!(verdict, Verdict::NotLinearizable { .. }),
                "{ops:?}"
            ),
        }
    }
}
