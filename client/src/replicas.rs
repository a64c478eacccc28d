//! Which node answers a follower or session read (docs/replication.md,
//! "Which node answers"): among the nodes known to have applied the index
//! the read needs, the cheapest, where a node's cost is its latency moving
//! average times one plus the reads this client has outstanding on it.
//! That is the "peak EWMA" of Finagle's and tower's balancers: the average
//! jumps to a slow answer at once, forgets it over [`DECAY`], and an idle
//! node's cost decays towards zero, so a node that was slow is tried again
//! later. A node that could not be reached is avoided for a while.
//!
//! tower's balancer picks among `Service`s but cannot filter them by a
//! per-request log index, hence this small module.

use std::time::{Duration, Instant};

use crate::{Client, Command, Error, ErrorCode, Reply};

/// How fast a latency sample is forgotten: Finagle's default.
const DECAY: Duration = Duration::from_secs(10);
/// How long a node that failed is avoided: doubling from the first to the
/// last with each failure in a row.
const AVOID: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(8));

/// What a client knows of one node's load and progress.
#[derive(Debug, Clone, Default)]
pub(crate) struct Load {
    /// Reads sent to the node and not answered yet.
    outstanding: u32,
    /// The latency average (seconds) and when it was last updated; `None`
    /// until the node first answers.
    latency: Option<(f64, Instant)>,
    /// The highest log index the node has reported applying.
    applied: u64,
    /// Failures in a row.
    failures: u32,
    /// Not chosen before this, while other nodes may be.
    avoid_until: Option<Instant>,
}

impl Load {
    /// The node's cost now: the decayed latency average times one plus the
    /// outstanding reads. An unmeasured node costs nothing, so each node is
    /// tried once.
    fn cost(&self, now: Instant) -> f64 {
        let latency = self
            .latency
            .map_or(0.0, |(average, at)| average * decayed(at, now));
        latency * f64::from(self.outstanding + 1)
    }

    /// The node answered after `took`, having applied `applied` (0 if the
    /// answer did not say).
    fn answered(&mut self, took: Duration, applied: u64, now: Instant) {
        let sample = took.as_secs_f64();
        let average = match self.latency {
            Some((average, _)) if sample > average => sample,
            Some((average, at)) => {
                let keep = decayed(at, now);
                average * keep + sample * (1.0 - keep)
            }
            None => sample,
        };
        self.latency = Some((average, now));
        self.applied = self.applied.max(applied);
        self.failures = 0;
        self.avoid_until = None;
    }

    /// The node could not be reached or did not answer in time.
    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        let avoid = AVOID.0.saturating_mul(1 << doublings).min(AVOID.1);
        self.avoid_until = Some(now + avoid);
    }

    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until.is_some_and(|until| now < until)
    }
}

/// The weight an average keeps after the time since `at`.
fn decayed(at: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    (-elapsed / DECAY.as_secs_f64()).exp()
}

/// The node to read from, skipping `skip` (already tried in this call):
/// the cheapest not avoided (all of them if every one is), among those known
/// to have applied `after` if any is. Ties go to the earlier address, so a
/// fresh client starts with the first. `None` when every node was skipped.
pub(crate) fn choose(loads: &[Load], after: u64, skip: &[usize], now: Instant) -> Option<usize> {
    let left: Vec<usize> = (0..loads.len()).filter(|i| !skip.contains(i)).collect();
    let narrow = |pool: Vec<usize>, keep: &dyn Fn(&Load) -> bool| {
        let kept: Vec<usize> = pool.iter().copied().filter(|&i| keep(&loads[i])).collect();
        if kept.is_empty() {
            pool
        } else {
            kept
        }
    };
    let pool = narrow(left, &|load| !load.avoided(now));
    let pool = narrow(pool, &|load| load.applied >= after);
    pool.into_iter()
        .map(|i| (i, loads[i].cost(now)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// One node as a reader sees it.
struct Node {
    addr: String,
    /// Talks to this node only, one attempt per call: retries are the
    /// reader's, which may move to another node.
    client: Client,
    load: std::sync::Mutex<Load>,
}

/// The nodes of a client's address list, for its follower and session reads.
pub(crate) struct Replicas {
    nodes: Vec<Node>,
}

/// One node's load as a client sees it ([`Client::replica_loads`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLoad {
    /// The node's address, as given to the client.
    pub addr: String,
    /// Reads this client has sent there and not had answered yet.
    pub outstanding: u32,
    /// The latency moving average, decayed to now; `None` before the first
    /// answer.
    pub latency: Option<Duration>,
    /// The highest log index the node has reported applying to this client.
    pub applied: u64,
    /// Whether the node is avoided after failing.
    pub avoided: bool,
}

impl Replicas {
    /// One node per address; `client` builds a single-address client.
    pub(crate) fn new(
        addrs: &[String],
        client: impl Fn(&str) -> Result<Client, Error>,
    ) -> Result<Replicas, Error> {
        let nodes = addrs
            .iter()
            .map(|addr| {
                Ok(Node {
                    addr: addr.clone(),
                    client: client(addr)?,
                    load: Default::default(),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Replicas { nodes })
    }

    fn loads(&self) -> Vec<Load> {
        self.nodes.iter().map(|n| lock(&n.load).clone()).collect()
    }

    /// Notes that the node at `addr` (if it is one of these) has applied
    /// `index`: a write it led was acknowledged with it.
    pub(crate) fn applied_at(&self, addr: &str, index: u64) {
        if let Some(node) = self.nodes.iter().find(|n| n.addr == addr) {
            let mut load = lock(&node.load);
            load.applied = load.applied.max(index);
        }
    }

    /// Each node's load, in address order.
    pub(crate) fn report(&self) -> Vec<ReplicaLoad> {
        let now = Instant::now();
        self.nodes
            .iter()
            .map(|node| {
                let load = lock(&node.load);
                ReplicaLoad {
                    addr: node.addr.clone(),
                    outstanding: load.outstanding,
                    latency: load
                        .latency
                        .map(|(average, at)| Duration::from_secs_f64(average * decayed(at, now))),
                    applied: load.applied,
                    avoided: load.avoided(now),
                }
            })
            .collect()
    }

    /// Reads with `command` (an `Indexed` read of any node, waiting for
    /// `after`) from the cheapest node, moving to the next on a failure or
    /// `Lagging`, pausing (`pauses`) each time every node has been tried.
    /// At most `attempts` attempts.
    pub(crate) async fn read(
        &self,
        command: Command,
        after: u64,
        attempts: usize,
        mut pauses: impl Iterator<Item = Duration>,
    ) -> Result<Reply, Error> {
        let mut tried = Vec::new();
        let mut attempt = 1;
        loop {
            let chosen = match choose(&self.loads(), after, &tried, Instant::now()) {
                Some(i) => i,
                None => {
                    tokio::time::sleep(pauses.next().unwrap_or_default()).await;
                    tried.clear();
                    choose(&self.loads(), after, &tried, Instant::now()).unwrap_or(0)
                }
            };
            tried.push(chosen);
            match self.read_from(&self.nodes[chosen], command.clone()).await {
                Err(e) if e.is_retryable() && attempt < attempts => attempt += 1,
                result => return result,
            }
        }
    }

    /// One attempt on `node`, its load kept up to date.
    async fn read_from(&self, node: &Node, command: Command) -> Result<Reply, Error> {
        let started = Instant::now();
        let result = {
            let _counted = Outstanding::count(&node.load);
            node.client.call_once_more(command).await
        };
        let now = Instant::now();
        let mut load = lock(&node.load);
        match &result {
            Ok(Reply::Indexed { index, .. }) => load.answered(now - started, *index, now),
            Ok(_) => load.answered(now - started, 0, now),
            // It answered, slowly: its latency says so.
            Err(e) if e.code() == Some(ErrorCode::Lagging) => load.answered(now - started, 0, now),
            Err(e) if e.is_retryable() => load.failed(now),
            Err(_) => {}
        }
        result
    }
}

/// A read outstanding on a node, counted out when dropped: also when the
/// caller gives up on the read (a timeout, a dropped future).
struct Outstanding<'a>(&'a std::sync::Mutex<Load>);

impl<'a> Outstanding<'a> {
    fn count(load: &'a std::sync::Mutex<Load>) -> Outstanding<'a> {
        lock(load).outstanding += 1;
        Outstanding(load)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        lock(self.0).outstanding -= 1;
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn measured(latency: Duration, applied: u64, at: Instant) -> Load {
        let mut load = Load::default();
        load.answered(latency, applied, at);
        load
    }

    #[test]
    fn a_fresh_client_starts_with_the_first_node_then_tries_the_others() {
        let now = Instant::now();
        let mut loads = vec![Load::default(); 3];
        assert_eq!(choose(&loads, 0, &[], now), Some(0));
        loads[0] = measured(MS, 5, now);
        assert_eq!(choose(&loads, 0, &[], now), Some(1), "unmeasured first");
        loads[1] = measured(MS * 2, 5, now);
        loads[2] = measured(MS * 3, 5, now);
        assert_eq!(choose(&loads, 0, &[], now), Some(0), "then the fastest");
    }

    #[test]
    fn outstanding_reads_spread_the_load() {
        let now = Instant::now();
        let mut loads = vec![measured(MS, 0, now), measured(MS * 3, 0, now)];
        loads[0].outstanding = 2; // cost 3 ms, the other 3 ms: a tie
        assert_eq!(choose(&loads, 0, &[], now), Some(0));
        loads[0].outstanding = 3;
        assert_eq!(choose(&loads, 0, &[], now), Some(1));
    }

    #[test]
    fn a_slow_answer_counts_at_once_and_is_forgotten_with_time() {
        let now = Instant::now();
        let mut load = measured(MS, 0, now);
        load.answered(MS * 100, 0, now);
        assert_eq!(load.cost(now), 0.1, "the peak is taken whole");
        // A fast answer right away pulls the average down only partly.
        load.answered(MS, 0, now + MS);
        assert!(load.cost(now + MS) > 0.09);
        // Idle, the cost decays: after 5 decay times it is under 1%.
        assert!(load.cost(now + DECAY * 5) < 0.1 * 0.01);
        let (fast, slow) = (measured(MS, 0, now), measured(MS * 40, 0, now));
        let later = now + DECAY * 5;
        assert_eq!(choose(&[slow.clone(), fast.clone()], 0, &[], now), Some(1));
        assert_eq!(
            choose(&[slow, measured(MS, 0, later)], 0, &[], later),
            Some(0),
            "after a while the slow node is tried again"
        );
    }

    #[test]
    fn nodes_known_to_have_the_index_come_first() {
        let now = Instant::now();
        let loads = vec![measured(MS, 10, now), measured(MS * 50, 20, now)];
        assert_eq!(choose(&loads, 10, &[], now), Some(0));
        assert_eq!(choose(&loads, 15, &[], now), Some(1), "only 1 has it");
        assert_eq!(
            choose(&loads, 30, &[], now),
            Some(0),
            "none is known to have it: the cheapest, which may wait"
        );
    }

    #[test]
    fn a_failed_node_is_avoided_for_longer_each_time_in_a_row() {
        let now = Instant::now();
        let mut loads = vec![measured(MS, 0, now), measured(MS * 9, 0, now)];
        loads[0].failed(now);
        assert_eq!(choose(&loads, 0, &[], now), Some(1));
        assert_eq!(choose(&loads, 0, &[], now + AVOID.0), Some(0));
        loads[0].failed(now);
        loads[0].failed(now);
        assert_eq!(choose(&loads, 0, &[], now + AVOID.0 * 3), Some(1));
        assert_eq!(choose(&loads, 0, &[], now + AVOID.0 * 4), Some(0));
        for _ in 0..40 {
            loads[0].failed(now);
        }
        assert_eq!(loads[0].avoid_until, Some(now + AVOID.1), "capped");
        loads[0].answered(MS, 0, now);
        assert_eq!(choose(&loads, 0, &[], now), Some(0), "an answer clears it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_given_up_on_is_counted_out() {
        let load = std::sync::Mutex::new(Load::default());
        let read = async {
            let _counted = Outstanding::count(&load);
            std::future::pending::<()>().await
        };
        assert!(tokio::time::timeout(MS, read).await.is_err());
        assert_eq!(lock(&load).outstanding, 0);
    }

    #[test]
    fn every_node_avoided_or_skipped() {
        let now = Instant::now();
        let mut loads = vec![measured(MS * 2, 0, now), measured(MS, 0, now)];
        loads[0].failed(now);
        loads[1].failed(now);
        assert_eq!(
            choose(&loads, 0, &[], now),
            Some(1),
            "all avoided: cheapest"
        );
        assert_eq!(choose(&loads, 0, &[1], now), Some(0));
        assert_eq!(choose(&loads, 0, &[0, 1], now), None);
    }
}
