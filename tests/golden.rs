//! The byte-exact examples of docs/protocol.md, checked against the codec.
//!
//! Every example block in the document is tagged `<!-- golden:NAME -->` and
//! holds hex bytes (text after `#` is commentary). This test encodes the
//! message named NAME and requires the exact bytes, frame length included, and
//! decodes the document's bytes back to the same message.

use bytes::Bytes;
use kvstore_client::{
    codec, ClusterMember, ClusterRequest, ClusterStatus, Command, Compare, CompareOp, Condition,
    ErrorCode, Event, EventKind, ExpireWhen, Expiry, GroupView, Reply, Request, Response, Target,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

enum Message {
    Request(Request),
    Response(Response),
}

fn examples() -> Vec<(&'static str, Message)> {
    use Message::{Request as Rq, Response as Rs};
    let rq = |id, command| Rq(Request { id, command });
    let rs = |id, reply| Rs(Response { id, reply });
    vec![
        (
            "set-request",
            rq(
                1,
                Command::Set {
                    key: b("k"),
                    value: b("v1"),
                },
            ),
        ),
        ("get-request", rq(2, Command::Get { key: b("k") })),
        ("delete-request", rq(3, Command::Delete { key: b("k") })),
        (
            "bulkset-request",
            rq(
                4,
                Command::BulkSet {
                    items: vec![(b("a"), b("1")), (b("b"), b("2"))],
                },
            ),
        ),
        ("exists-request", rq(5, Command::Exists { key: b("k") })),
        (
            "keys-request",
            rq(
                6,
                Command::Keys {
                    prefix: b("user:"),
                    start_after: Some(b("user:1")),
                    limit: 100,
                },
            ),
        ),
        ("auth-request", rq(8, Command::Auth { token: b("s3cret") })),
        (
            "setif-request",
            rq(
                9,
                Command::SetIf {
                    key: b("k"),
                    value: b("v"),
                    condition: Condition::Absent,
                    get: false,
                },
            ),
        ),
        ("getdel-request", rq(10, Command::GetDel { key: b("k") })),
        (
            "setexpiring-request",
            rq(
                27,
                Command::SetExpiring {
                    key: b("k"),
                    value: b("v"),
                    condition: Condition::Always,
                    get: false,
                    expiry: Expiry::In(60_000),
                },
            ),
        ),
        (
            "expire-request",
            rq(
                28,
                Command::Expire {
                    key: b("k"),
                    expiry: Expiry::At(1_767_225_600_000),
                    when: ExpireWhen::Later,
                },
            ),
        ),
        ("persist-request", rq(29, Command::Persist { key: b("k") })),
        (
            "getwithversion-request",
            rq(37, Command::GetWithVersion { key: b("k") }),
        ),
        (
            "watch-request",
            rq(
                39,
                Command::Watch {
                    prefix: b("a/"),
                    from_revision: 7,
                },
            ),
        ),
        (
            "txn-request",
            rq(
                38,
                Command::Txn {
                    compare: vec![Compare {
                        key: b("k"),
                        target: Target::ModRevision(42),
                        op: CompareOp::Equal,
                    }],
                    success: vec![Command::Set {
                        key: b("k"),
                        value: b("v"),
                    }],
                    failure: vec![Command::Get { key: b("k") }],
                },
            ),
        ),
        (
            "ttl-request",
            rq(
                30,
                Command::Ttl {
                    key: b("k"),
                    absolute: false,
                },
            ),
        ),
        (
            "setrange-request",
            rq(
                32,
                Command::SetRange {
                    key: b("k"),
                    offset: 3,
                    value: b("ab"),
                },
            ),
        ),
        (
            "incrbyfloat-request",
            rq(
                33,
                Command::IncrByFloat {
                    key: b("k"),
                    by: b("1.5"),
                },
            ),
        ),
        (
            "bulksetifabsent-request",
            rq(
                34,
                Command::BulkSetIfAbsent {
                    items: vec![(b("a"), b("1")), (b("b"), b("2"))],
                },
            ),
        ),
        (
            "copy-request",
            rq(
                35,
                Command::Copy {
                    from: b("a"),
                    to: b("b"),
                    replace: false,
                },
            ),
        ),
        (
            "rename-request",
            rq(
                36,
                Command::Rename {
                    from: b("a"),
                    to: b("b"),
                    replace: true,
                },
            ),
        ),
        (
            "getex-request",
            rq(
                31,
                Command::GetEx {
                    key: b("k"),
                    expiry: Expiry::Never,
                },
            ),
        ),
        (
            "incr-request",
            rq(
                11,
                Command::Incr {
                    key: b("n"),
                    by: -2,
                },
            ),
        ),
        (
            "append-request",
            rq(
                12,
                Command::Append {
                    key: b("k"),
                    value: b("xy"),
                },
            ),
        ),
        (
            "deletemany-request",
            rq(
                13,
                Command::DeleteMany {
                    keys: vec![b("a"), b("b")],
                },
            ),
        ),
        ("flush-request", rq(14, Command::Flush)),
        (
            "scan-request",
            rq(
                15,
                Command::Scan {
                    prefix: b("u"),
                    start_after: None,
                    limit: 10,
                    reverse: true,
                },
            ),
        ),
        (
            "range-request",
            rq(
                16,
                Command::Range {
                    start: b("a"),
                    end: Some(b("c")),
                    limit: 0,
                    reverse: false,
                },
            ),
        ),
        ("stats-request", rq(17, Command::Stats)),
        (
            "stats-response",
            rs(17, Reply::Stats(vec![("keys".to_string(), 3)])),
        ),
        (
            "pairs-response",
            rs(
                15,
                Reply::Pairs {
                    pairs: vec![(b("u1"), b("x"))],
                    more: true,
                },
            ),
        ),
        ("int-response", rs(11, Reply::Int(40))),
        ("backup-request", rq(18, Command::Backup { name: None })),
        (
            "backup-named-request",
            rq(
                19,
                Command::Backup {
                    name: Some("nightly".into()),
                },
            ),
        ),
        ("backup-next-request", rq(20, Command::BackupNext)),
        ("chunk-response", rs(18, Reply::Chunk(b("KVSTSNAP")))),
        (
            "backup-done-response",
            rs(
                20,
                Reply::BackupDone {
                    keys: 1,
                    ops: 1,
                    bytes: 126,
                },
            ),
        ),
        (
            "cluster-status-request",
            rq(21, Command::Cluster(ClusterRequest::Status)),
        ),
        (
            "cluster-add-group-request",
            rq(
                23,
                Command::Cluster(ClusterRequest::AddGroup {
                    nodes: vec![1, 2, 3],
                }),
            ),
        ),
        (
            "cluster-set-slots-request",
            rq(
                24,
                Command::Cluster(ClusterRequest::SetSlots {
                    group: 2,
                    first: 0,
                    last: 99,
                    state: kvstore_client::slot::SlotState::Serving,
                }),
            ),
        ),
        (
            "cluster-move-slots-request",
            rq(
                25,
                Command::Cluster(ClusterRequest::MoveSlots {
                    first: 0,
                    last: 8191,
                    to: 2,
                }),
            ),
        ),
        (
            "cluster-abort-move-request",
            rq(26, Command::Cluster(ClusterRequest::AbortMove)),
        ),
        (
            "cluster-rebalance-request",
            rq(27, Command::Cluster(ClusterRequest::Rebalance)),
        ),
        (
            "cluster-move-replica-request",
            rq(
                28,
                Command::Cluster(ClusterRequest::MoveReplica {
                    group: 2,
                    from: 2,
                    to: 3,
                }),
            ),
        ),
        (
            "indexed-request",
            rq(
                22,
                Command::Indexed {
                    after: 7,
                    any_node: true,
                    command: Box::new(Command::Get { key: "k".into() }),
                },
            ),
        ),
        ("open-session-request", rq(23, Command::OpenSession)),
        (
            "once-request",
            rq(
                24,
                Command::Once {
                    session: 3,
                    seq: 5,
                    acked: 4,
                    command: Box::new(Command::Incr { key: b("n"), by: 1 }),
                },
            ),
        ),
        (
            "restore-request",
            rq(
                25,
                Command::Restore {
                    name: "nightly".into(),
                },
            ),
        ),
        (
            "indexed-response",
            rs(
                22,
                Reply::Indexed {
                    index: 9,
                    reply: Box::new(Reply::Value(Some("v1".into()))),
                },
            ),
        ),
        (
            "cluster-response",
            rs(
                21,
                Reply::Cluster(Box::new(ClusterStatus {
                    node_id: 1,
                    role: "leader".into(),
                    term: 2,
                    leader: Some(1),
                    last_log_index: Some(5),
                    applied_index: Some(5),
                    pid: 4242,
                    members: vec![ClusterMember {
                        id: 1,
                        addr: "a:1".into(),
                        raft_addr: "a:2".into(),
                        voter: true,
                        matched_index: Some(5),
                        resp_addr: Some("a:3".into()),
                    }],
                    groups: vec![GroupView {
                        id: 1,
                        role: "leader".into(),
                        term: 2,
                        leader: Some(1),
                        applied_index: Some(5),
                        purged_index: Some(3),
                        voters: vec![1],
                        keys: 42,
                        slots: vec![(0, 16_383)],
                    }],
                    moving: None,
                })),
            ),
        ),
        ("ok-response", rs(1, Reply::Ok)),
        ("value-response", rs(2, Reply::Value(Some(b("v1"))))),
        ("value-none-response", rs(2, Reply::Value(None))),
        (
            "txn-response",
            rs(
                38,
                Reply::Txn {
                    succeeded: false,
                    replies: vec![Reply::Value(Some(b("w")))],
                },
            ),
        ),
        (
            "events-response",
            rs(
                39,
                Reply::Events {
                    revision: 9,
                    events: vec![
                        Event {
                            revision: 9,
                            key: b("a/x"),
                            kind: EventKind::Put {
                                value: b("1"),
                                deadline: None,
                            },
                        },
                        Event {
                            revision: 9,
                            key: b("a/y"),
                            kind: EventKind::Delete,
                        },
                    ],
                },
            ),
        ),
        (
            "versioned-response",
            rs(
                37,
                Reply::Versioned {
                    value: Some(b("v")),
                    modified: 42,
                    created: 7,
                },
            ),
        ),
        ("bool-response", rs(3, Reply::Bool(true))),
        (
            "keys-response",
            rs(
                6,
                Reply::Keys {
                    keys: vec![b("user:2"), b("user:3")],
                    more: false,
                },
            ),
        ),
        (
            "error-response",
            rs(7, Reply::error(ErrorCode::KeyTooLarge, "key too large")),
        ),
    ]
}

/// The hex of the block tagged `golden:NAME` in docs/protocol.md.
fn documented(doc: &str, name: &str) -> Vec<u8> {
    let tag = format!("<!-- golden:{name} -->");
    let start = doc
        .find(&tag)
        .unwrap_or_else(|| panic!("docs/protocol.md has no example {name}"));
    let block = doc[start..]
        .split("```")
        .nth(1)
        .expect("a code block after the tag");
    block
        .lines()
        .skip(1) // the fence's info string
        .flat_map(|line| {
            line.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|h| u8::from_str_radix(&h, 16).unwrap_or_else(|_| panic!("{name}: bad hex {h:?}")))
        .collect()
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[test]
fn every_documented_example_is_byte_exact() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    for (name, message) in examples() {
        let expected = documented(&doc, name);
        let (actual, body) = match &message {
            Message::Request(r) => (framed(codec::encode(r).unwrap()), &expected[4..]),
            Message::Response(r) => (framed(codec::encode(r).unwrap()), &expected[4..]),
        };
        assert_eq!(
            hex(&actual),
            hex(&expected),
            "{name}: the codec's bytes (left) differ from docs/protocol.md (right)"
        );
        match message {
            Message::Request(r) => assert_eq!(codec::decode::<Request>(body).unwrap(), r, "{name}"),
            Message::Response(r) => {
                assert_eq!(codec::decode::<Response>(body).unwrap(), r, "{name}")
            }
        }
    }
}

/// The backup file of docs/protocol.md: one pair copied (`k` = `v`, set at
/// revision 1), then one write made during the copy (`k2` = `v2`, the
/// write of revision 2), as the server encodes it.
#[test]
fn the_documented_backup_file_is_byte_exact_and_loads() {
    use kvstore::storage::{op::WriteOp, snapshot, store::Store};
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let store = Store::new(1);
    let set = |key, value| WriteOp::Set {
        key: b(key),
        value: b(value),
    };
    store.apply_at(&set("k", "v"), 1);
    let mut encoder = snapshot::Encoder::new(1, 1);
    while encoder.copy_some(&store) {}
    encoder.push_op(&set("k2", "v2"), 2).unwrap();
    encoder.finish();
    let actual = encoder.take(usize::MAX).to_vec();
    let expected = documented(&doc, "backup-file");
    assert_eq!(
        hex(&actual),
        hex(&expected),
        "the encoder's bytes (left) differ from docs/protocol.md (right)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup");
    std::fs::write(&path, &expected).unwrap();
    let loaded = Store::new(4);
    let info = snapshot::load(&kvstore::storage::fs::RealFs, &path, &loaded)
        .unwrap()
        .unwrap();
    assert_eq!((info.entries, info.ops, info.bytes), (1, 1, 150));
    let revised = |key: &str| loaded.get_revised(key.as_bytes()).map(|(_, r)| r.modified);
    assert_eq!((revised("k"), revised("k2")), (Some(1), Some(2)));
    assert_eq!(loaded.get(b"k2"), Some(b("v2")));
    assert_eq!(loaded.len(), 2);
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
