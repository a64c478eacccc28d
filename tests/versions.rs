//! Revisions (docs/transactions.md#revisions) on the real server over TCP,
//! on both engines: `GetWithVersion` answers the log positions of a key's
//! last write and of its creation, every write moves the first, a delete
//! and a new write move both, a write that changes nothing moves neither;
//! and they are the same after `kill -9` and a restart from a snapshot and
//! the log after it.

mod common;

use common::Server;
use kvstore_client::{BlockingClient, Condition, Versioned};

/// Both engines, each checkpointing every 8 KiB of log so that a restart
/// loads a snapshot (or the disk engine's checkpoint) and replays the rest.
const ENGINES: [&[&str]; 2] = [
    &["--snapshot-after-bytes", "8192"],
    &["--engine", "disk", "--snapshot-after-bytes", "8192"],
];

fn versioned(client: &BlockingClient, key: &str) -> Versioned {
    let found = client.get_with_version(key).unwrap();
    found.unwrap_or_else(|| panic!("{key} is missing"))
}

#[test]
fn revisions_follow_writes_and_survive_kill_9_and_a_restart() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("kvstore.db");
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();

        client.set("a", "1").unwrap();
        let first = versioned(&client, "a");
        assert!(first.modified > 0, "{engine:?}");
        assert_eq!(first.created, first.modified);

        // The same value written again still moves `modified`.
        client.set("a", "1").unwrap();
        let again = versioned(&client, "a");
        assert!(again.modified > first.modified, "{engine:?}");
        assert_eq!(again.created, first.created);

        // A write that changes nothing moves nothing.
        assert!(!client.set_if("a", "2", Condition::Absent).unwrap());
        assert_eq!(versioned(&client, "a"), again);

        // Created again after a delete.
        client.delete("a").unwrap();
        assert_eq!(client.get_with_version("a").unwrap(), None);
        client.incr("a", 5).unwrap();
        let remade = versioned(&client, "a");
        assert!(remade.created > again.modified, "{engine:?}");
        assert_eq!(remade.created, remade.modified);

        // Enough log for a checkpoint, and writes after it.
        for i in 0..200 {
            client.set(format!("fill{i}"), "x".repeat(100)).unwrap();
        }
        client.incr("a", 1).unwrap();
        let before: Vec<Versioned> = ["a", "fill0", "fill199"]
            .iter()
            .map(|key| versioned(&client, key))
            .collect();
        assert!(before[0].modified > before[0].created, "{engine:?}");

        server.kill9();
        let server = Server::start(&data, engine);
        let client = BlockingClient::connect(server.addr.to_string()).unwrap();
        let after: Vec<Versioned> = ["a", "fill0", "fill199"]
            .iter()
            .map(|key| versioned(&client, key))
            .collect();
        assert_eq!(after, before, "{engine:?}");

        // Positions go on growing after the restart.
        client.set("fill0", "y").unwrap();
        assert!(versioned(&client, "fill0").modified > before[0].modified);
    }
}
