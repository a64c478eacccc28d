//! Resharding under load and faults: the linearizability check's clients
//! and nemesis (kills, isolations, stalls and cut links) run on a sharded
//! cluster of four nodes while a quarter of the slots move between two
//! groups again and again, group 2 moves between nodes 3 and 4 in turn, and
//! full scans run over keys that are present throughout.
//!
//! The long run is
//! `KVSTORE_LINEARIZABILITY_SECS=600 cargo test -p kvstore --test cluster slots_move_through -- --nocapture`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::{cli_ok, cli_path};
use super::groups::scan_in_pages;
use super::linearizability::{check_under_faults, Beside};
use super::*;

/// Keys written before the moves and never touched after: every full scan
/// must give each exactly once.
const FIXED: usize = 2_000;

/// The slots that move: a quarter of them.
const MOVING: &str = "0-4095";

/// How long one `move-slots` may take before the mover gives up on it
/// (the move stays recorded: group 1's leader finishes it).
const MOVE_LIMIT: &str = "30";

#[test]
fn concurrent_clients_stay_linearizable_while_slots_move_through_kills_and_partitions() {
    check_under_faults(4, Some(Box::new(reshard) as Beside));
}

/// Makes the cluster sharded (a second group, the fixed keys), then moves
/// the slots back and forth and scans on threads of their own.
fn reshard(
    nodes: &[Spec],
    leader: &Spec,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<String> {
    let fixed: Vec<String> = (0..FIXED).map(|i| format!("fix{i:05}")).collect();
    let client = kvstore_client::BlockingClient::connect(leader.addr.to_string()).unwrap();
    for chunk in fixed.chunks(500) {
        client.bulk_set(chunk.iter().map(|k| (k, k))).unwrap();
    }
    cli_ok(leader.addr, &["cluster", "add-group", "--nodes", "1,2,3"]);
    let mover = {
        let (nodes, stop) = (nodes.to_vec(), stop.clone());
        std::thread::spawn(move || move_back_and_forth(&nodes, &stop))
    };
    let all = addr_list(nodes);
    std::thread::spawn(move || {
        let scanner = kvstore_client::BlockingClient::connect(all).unwrap();
        let (mut scans, mut given_up) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            // A page that fails for 10 s (a fault): the scan starts again.
            match scan_in_pages(&scanner, "fix", 50, 100) {
                Ok(keys) => {
                    if keys != fixed {
                        panic!("scan {scans}: {}", explain_miss(&scanner, &fixed, &keys));
                    }
                    scans += 1;
                }
                Err(_) => given_up += 1,
            }
        }
        let ([moves, replica_moves], failed) = mover.join().unwrap();
        assert!(
            moves > 0 && replica_moves > 0,
            "{moves} slot moves, {replica_moves} replica moves"
        );
        assert!(scans > 0, "no scan was done");
        assert_eq!(
            scanner.keys("fix").map(Result::unwrap).count(),
            FIXED,
            "fixed keys at the end"
        );
        format!(
            "{moves} moves of slots {MOVING} and {replica_moves} of group 2 between nodes 3 \
             and 4 done ({failed} failed), {scans} full scans of {FIXED} keys each exact \
             ({given_up} given up)"
        )
    })
}

/// What a scan that gave `keys` instead of `fixed` missed, and whether
/// the missing keys are there when read one by one and in a scan again:
/// a scan's flaw, or keys lost.
fn explain_miss(
    scanner: &kvstore_client::BlockingClient,
    fixed: &[String],
    keys: &[String],
) -> String {
    let missing: Vec<_> = (fixed.iter())
        .filter(|k| !keys.contains(k))
        .map(|k| (k, kvstore_client::slot::slot_of(k.as_bytes())))
        .collect();
    let read: Vec<_> = (missing.iter())
        .map(|(k, _)| scanner.get(k).map(|v| v.is_some()))
        .collect();
    let again = scan_in_pages(scanner, "fix", 50, 100).map(|again| again.len());
    format!(
        "{} keys; missing {missing:?}; read one by one: {read:?}; scanned again: {again:?}",
        keys.len()
    )
}

/// How long, once the run is over, a replica move cut short is sent again.
const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// In turn, moves the slots to the other group and group 2 to the other of
/// nodes 3 and 4, through group 1's leader, until `stop` (then a replica
/// move cut short is finished): the slot and replica moves done, and those
/// that failed.
fn move_back_and_forth(nodes: &[Spec], stop: &AtomicBool) -> ([u32; 2], u32) {
    let (mut to, mut on, mut done, mut failed) = ("2", ["3", "4"], [0, 0], 0);
    let (mut replica_cut_short, mut finish_by) = (false, None);
    for turn in (0..2).cycle() {
        if stop.load(Ordering::Relaxed) {
            // A replica move cut short leaves its leaver running the group
            // until it is sent again (docs/sharding.md): finish it.
            let by = *finish_by.get_or_insert_with(|| Instant::now() + FINISH_LIMIT);
            if !replica_cut_short || Instant::now() > by {
                break;
            }
            if turn == 0 {
                continue;
            }
        }
        let Some(leader) = leader_index(nodes) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let args: &[&str] = match turn {
            0 => &["cluster", "move-slots", "--slots", MOVING, "--to", to],
            _ => &[
                "cluster",
                "move-replica",
                "--group",
                "2",
                "--from",
                on[0],
                "--to",
                on[1],
            ],
        };
        let out = Command::new("timeout")
            .arg(MOVE_LIMIT)
            .arg(cli_path())
            .args(["--addr", &nodes[leader].addr.to_string()])
            .args(args)
            .output()
            .expect("run kvstore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A slot move that failed may still have been finished by the next
        // leader: then the slots are already there. A replica move that
        // failed is sent again until it is done.
        let there = turn == 0 && stderr.contains("other than");
        if turn == 1 {
            replica_cut_short = !out.status.success();
        }
        if out.status.success() || there {
            done[turn] += u32::from(!there);
            match turn {
                0 => to = if to == "2" { "1" } else { "2" },
                _ => on.reverse(),
            }
        } else {
            failed += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    (done, failed)
}
