//! The linearizability check: concurrent clients run `Get`, `Set` and
//! `Delete` on a few keys of a three-node cluster while a nemesis kills nodes
//! (`kill -9`, then restarts them) and cuts or stalls links through the link
//! proxies. Every operation is recorded with its invocation and answer times;
//! one whose answer never came (a timeout, a lost connection,
//! `OutcomeUnknown`) is recorded as possibly applied at any later time. Each
//! key's history then goes through the checker.
//!
//! The clients resend (`max_attempts(3)`): a write whose answer was lost is
//! sent again, to the same node or the next leader, in the client's session
//! (exactly-once writes), so a resent `Set` must not bring an old value back
//! over a newer one. An operation counts as answered only if some attempt
//! was; one whose every attempt failed with an error that proves it never
//! arrived (`NotLeader`, no connection) is dropped: if it had been applied
//! after all, a later read would show a value no recorded write wrote, and
//! the check would fail.
//!
//! `KVSTORE_LINEARIZABILITY_DEDUP=off` runs the clients without sessions
//! (at-least-once resends): the check should then find anomalies, given
//! faults that lose answers (a long run).
//!
//! `cargo test` runs 20 seconds. The long run is
//! `KVSTORE_LINEARIZABILITY_SECS=600 cargo test -p kvstore --test cluster concurrent_clients_see -- --nocapture`
//! (`KVSTORE_LINEARIZABILITY_SEED` replays a fault schedule; timing still
//! varies). Its figures are in docs/replication.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvstore_client::{Client, Command, Reply};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::checker::{self, Kind, Op, Verdict};
use super::partition::{start_partitionable_n, start_proxied};
use super::proxy::Link;
use super::*;

const CLIENTS: usize = 5;
/// Attempts per operation: resends on.
const ATTEMPTS: usize = 3;
/// Keys in use at a time, all clients sharing them.
const KEYS: usize = 3;
/// Every this long the clients move on to fresh keys. An operation whose
/// outcome is unknown stays pending to the end of its key's history, and
/// the search cost grows with the operations it may fall between: short
/// histories keep the check fast however long the run (the "independent
/// keys" of Jepsen). 5 s spans a fault and the election after it.
const GENERATION: Duration = Duration::from_secs(5);
/// States the checker may explore per key before giving up (a give-up fails
/// the test: it proves nothing).
const BUDGET: usize = 4_000_000;

/// Every operation so far: (key, operation, the node asked and the error
/// if any, to study a failure).
type History = Arc<Mutex<Vec<(usize, Op, String)>>>;

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn value_id(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a value no client wrote: {value:?}"))
}

/// One client: operations one after another until `stop`.
async fn client_loop(
    client: Client,
    mut rng: TestRng,
    epoch: Instant,
    next_value: Arc<AtomicU64>,
    history: History,
    stop: Arc<AtomicBool>,
) {
    let now = || epoch.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let generation = (epoch.elapsed().as_millis() / GENERATION.as_millis()) as usize;
        let key = generation * KEYS + rng.random_range(0..KEYS);
        let name = format!("lin{key}");
        let (command, mut kind) = match rng.random_range(0..10) {
            0..=4 => (Command::Get { key: name.into() }, Kind::Read(None)),
            5..=7 => {
                let id = next_value.fetch_add(1, Ordering::Relaxed);
                let command = Command::Set {
                    key: name.into(),
                    value: format!("v{id}").into(),
                };
                (command, Kind::Write(id))
            }
            _ => (Command::Delete { key: name.into() }, Kind::Delete(None)),
        };
        let node = client.addr();
        let call = now();
        let result = client.call(command).await;
        let ret = now();
        let note = match &result {
            Ok(_) => node,
            Err(e) => format!("{node}: {e}"),
        };
        let answered = match (result, &mut kind) {
            (Ok(Reply::Value(value)), Kind::Read(seen)) => {
                *seen = value.as_deref().map(value_id);
                true
            }
            (Ok(Reply::Ok), Kind::Write(_)) => true,
            (Ok(Reply::Bool(existed)), Kind::Delete(answer)) => {
                *answer = Some(existed);
                true
            }
            (Ok(other), _) => panic!("unexpected reply {other:?} to {kind:?}"),
            (Err(e), _) => {
                let never_arrived = e.never_arrived();
                tokio::time::sleep(Duration::from_millis(20)).await;
                if never_arrived {
                    continue;
                }
                false
            }
        };
        let op = Op {
            kind,
            call,
            ret: answered.then_some(ret),
        };
        history.lock().unwrap().push((key, op, note));
    }
}

/// What the nemesis did.
#[derive(Default, Debug)]
struct Faults {
    kills: u32,
    isolations: u32,
    stalls: u32,
    cut_links: u32,
}

impl Faults {
    fn total(&self) -> u32 {
        self.kills + self.isolations + self.stalls + self.cut_links
    }
}

#[test]
fn concurrent_clients_see_a_linearizable_history_through_kills_and_partitions() {
    check_under_faults(3, None);
}

/// Work that runs beside the clients and the nemesis, on a thread of its
/// own, until the flag is set; given the nodes and group 1's leader when
/// the clients start. Its thread gives a line for the summary.
pub(crate) type Beside =
    Box<dyn FnOnce(&[Spec], &Spec, Arc<AtomicBool>) -> std::thread::JoinHandle<String>>;

/// Runs the clients and the nemesis on a cluster of `n` nodes (and
/// `beside`, if any), then checks every key's history.
pub(crate) fn check_under_faults(n: u64, beside: Option<Beside>) {
    let secs: u64 = std::env::var("KVSTORE_LINEARIZABILITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("KVSTORE_LINEARIZABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::UNIX_EPOCH.elapsed().unwrap().as_secs());
    let dedup = std::env::var("KVSTORE_LINEARIZABILITY_DEDUP").map_or(true, |v| v != "off");
    eprintln!("linearizability: {secs} s, seed {seed}, exactly-once writes {dedup}");
    let mut nemesis = rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let (nodes, mut servers, links) = start_partitionable_n(dir.path(), &rt, n);
    let leader = wait_for_leader(&nodes);
    let all = addr_list(&nodes);
    let beside_stop = Arc::new(AtomicBool::new(false));
    let beside = beside.map(|start| start(&nodes, &leader, beside_stop.clone()));

    let epoch = Instant::now();
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next_value = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = Client::builder()
                .addr(all.clone())
                .max_attempts(ATTEMPTS)
                .exactly_once(dedup)
                .connect_timeout(Duration::from_millis(500))
                .request_timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            rt.spawn(client_loop(
                client,
                rng(seed ^ ((i as u64 + 1) << 32)),
                epoch,
                next_value.clone(),
                history.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // The nemesis: a fault every 1-2.5 s, lasting 1-3 s, until time is up.
    let mut faults = Faults::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let pause = |rng: &mut TestRng, from: u64, to: u64| {
        std::thread::sleep(Duration::from_millis(rng.random_range(from..to)))
    };
    while Instant::now() < deadline {
        pause(&mut nemesis, 1000, 2500);
        // Half the faults hit the leader, when there is one.
        let victim = match leader_index(&nodes) {
            Some(leader) if nemesis.random_bool(0.5) => leader,
            _ => nemesis.random_range(0..nodes.len()),
        };
        let id = nodes[victim].id;
        match nemesis.random_range(0..4) {
            0 => {
                servers[victim].take().unwrap().kill9();
                faults.kills += 1;
                pause(&mut nemesis, 1000, 3000);
                servers[victim] = Some(start_proxied(&nodes[victim], &nodes, dir.path(), &links));
            }
            1 => {
                links.isolate(id, Link::Down);
                faults.isolations += 1;
                pause(&mut nemesis, 1000, 3000);
                links.heal();
            }
            2 => {
                links.isolate(id, Link::Stalled);
                faults.stalls += 1;
                pause(&mut nemesis, 1000, 3000);
                links.heal();
            }
            _ => {
                let other = nodes.len();
                let other = nodes[(victim + 1 + nemesis.random_range(0..other - 1)) % other].id;
                links.set_between(id, other, Link::Down);
                faults.cut_links += 1;
                pause(&mut nemesis, 1000, 3000);
                links.heal();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    beside_stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    let beside = beside.map(|thread| thread.join().expect("the work beside the clients"));

    // Healed and whole again, the last value of every key is read once more,
    // by a client that may retry (a read is safe to resend).
    let reader = Client::builder().addr(all).build().unwrap();
    let keys = (history.lock().unwrap().iter())
        .map(|(k, _, _)| *k + 1)
        .max()
        .unwrap_or(0);
    for key in 0..keys {
        let call = epoch.elapsed().as_nanos() as u64;
        let value = rt
            .block_on(reader.get(format!("lin{key}")))
            .expect("a read after healing");
        let op = Op {
            kind: Kind::Read(value.as_deref().map(value_id)),
            call,
            ret: Some(epoch.elapsed().as_nanos() as u64),
        };
        history.lock().unwrap().push((key, op, "final read".into()));
    }

    every_replica_catches_up(&nodes);

    let history = std::mem::take(&mut *history.lock().unwrap());
    let unknown = history.iter().filter(|(_, op, _)| op.ret.is_none()).count();
    let mut anomalies = Vec::new();
    let started = Instant::now();
    let mut by_key: Vec<Vec<Op>> = vec![Vec::new(); keys];
    for (key, op, _) in &history {
        by_key[*key].push(*op);
    }
    for (key, ops) in by_key.iter().enumerate() {
        match checker::check(ops, BUDGET) {
            Verdict::Linearizable => {}
            Verdict::GaveUp => panic!("the checker gave up on key {key} ({} ops)", ops.len()),
            Verdict::NotLinearizable { stuck } => {
                // The whole history of the key, to study: one operation a
                // line, in invocation order.
                let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("linearizability-{seed}-key{key}.txt"));
                let mut sorted: Vec<_> = (history.iter()).filter(|(k, _, _)| *k == key).collect();
                sorted.sort_by_key(|(_, op, _)| op.call);
                let lines: Vec<String> = (sorted.iter())
                    .map(|(_, op, note)| format!("{op:?} {note}"))
                    .collect();
                std::fs::write(&path, lines.join("\n")).unwrap();
                eprintln!(
                    "key {key}: not linearizable near {stuck:?}; history in {}",
                    path.display()
                );
                anomalies.push((key, stuck))
            }
        }
    }
    eprintln!(
        "linearizability: {} operations checked ({unknown} with unknown outcome) on {keys} keys ({KEYS} at a time) by {CLIENTS} clients ({ATTEMPTS} attempts each, exactly-once {dedup}) in {secs} s; \
         {} faults injected ({faults:?}); {} anomalies; checked in {} ms",
        history.len(),
        faults.total(),
        anomalies.len(),
        started.elapsed().as_millis()
    );
    if let Some(line) = beside {
        eprintln!("beside the clients: {line}");
    }
    assert!(faults.total() > 0, "the run was too short for any fault");
    assert!(
        history
            .iter()
            .any(|(_, op, _)| matches!(op.kind, Kind::Read(Some(_)))),
        "no read saw a written value: the history tests nothing"
    );
    assert!(anomalies.is_empty(), "not linearizable: {anomalies:?}");
    assert_eq!(
        common::server_panics(),
        0,
        "a server panicked (its log is above): a group or task of it stopped"
    );
}

/// Healed and idle, every node applies each of its groups up to the same
/// index within 30 s: a replica whose group stopped (a panicked task, a
/// log it cannot restart from) would stay behind while a majority serves
/// every client, and the checker would never see it.
fn every_replica_catches_up(nodes: &[Spec]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut applied = std::collections::BTreeMap::<u64, Vec<(u64, Option<u64>)>>::new();
    while Instant::now() < deadline {
        applied.clear();
        let mut answered = 0;
        for node in nodes {
            let Some(status) = status(node.addr) else {
                continue;
            };
            answered += 1;
            for group in status.groups {
                let views = applied.entry(group.id).or_default();
                views.push((node.id, group.applied_index));
            }
        }
        let caught_up = |views: &Vec<(u64, Option<u64>)>| views.iter().all(|v| v.1 == views[0].1);
        if answered == nodes.len() && applied.values().all(caught_up) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("replicas still behind after 30 s, by group (node, applied index): {applied:?}");
}
