//! Server-wide counters, shared by the doors (native, RESP, gRPC): what `Stats`,
//! `/metrics` and `INFO` report about clients, commands and errors (see
//! `crate::figures`). Relaxed atomics: each figure is exact on its own, the
//! set is not one instant's snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvstore_client::protocol::COMMAND_NAMES;
use kvstore_client::{Command, Reply};

use crate::grpc::service::METHODS;

/// Slots of the per-error counters: more than any code so far (a unit
/// test checks).
pub const SLOTS: usize = 32;

pub struct Stats {
    /// For uptime.
    pub started: Instant,
    /// Connections being served now, all doors.
    pub connections: AtomicU64,
    /// Connections accepted since start (refused ones not included).
    pub connections_total: AtomicU64,
    /// Connections refused at the connection limit.
    pub connections_rejected: AtomicU64,
    /// Requests answered since start, all doors.
    pub commands: AtomicU64,
    /// Requests in the last whole second, all doors ([`Stats::tick`]).
    pub commands_last_second: AtomicU64,
    /// `commands` at the last tick.
    commands_at_tick: AtomicU64,
    /// Native requests by command tag: one per name, so a new command
    /// cannot outgrow it.
    pub native_commands: [AtomicU64; COMMAND_NAMES.len()],
    /// gRPC calls by method (`crate::grpc::service::METHODS`).
    pub grpc_calls: [AtomicU64; METHODS.len()],
    /// Native error replies by error code (codes are below [`SLOTS`]).
    pub errors: [AtomicU64; SLOTS],
    /// The last client id handed out (RESP `CLIENT ID`).
    client_ids: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            commands_last_second: AtomicU64::new(0),
            commands_at_tick: AtomicU64::new(0),
            native_commands: std::array::from_fn(|_| AtomicU64::new(0)),
            grpc_calls: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            client_ids: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts a connection in; it is counted out when the guard drops.
    pub fn connected(self: &Arc<Stats>) -> Connected {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        Connected(self.clone())
    }

    pub fn next_client_id(&self) -> u64 {
        self.client_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a request of the RESP door (or one refused before login); the
    /// other doors count through [`Stats::native_command`] and
    /// [`Stats::grpc_call`].
    pub fn command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a native request by its command.
    pub fn native_command(&self, command: &Command) {
        self.command();
        if let Some(slot) = self.native_commands.get(command.tag() as usize) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a call of the gRPC door by its method's slot.
    pub fn grpc_call(&self, slot: usize) {
        self.command();
        if let Some(slot) = self.grpc_calls.get(slot) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a reply if it is an error.
    pub fn reply(&self, reply: &Reply) {
        if let Reply::Error { code, .. } = reply {
            if let Some(slot) = self.errors.get(*code as usize) {
                slot.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Called once a second: the requests since the last call become
    /// `commands_last_second`, the node's load as `kvstore cluster status`
    /// shows it.
    pub fn tick(&self) {
        let now = self.commands.load(Ordering::Relaxed);
        let before = self.commands_at_tick.swap(now, Ordering::Relaxed);
        let last = now.saturating_sub(before);
        self.commands_last_second.store(last, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A connection being served; counts it out when dropped.
pub struct Connected(Arc<Stats>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_takes_the_requests_since_the_last_one() {
        let stats = Stats::default();
        (0..5).for_each(|_| stats.command());
        stats.tick();
        assert_eq!(Stats::get(&stats.commands_last_second), 5);
        stats.command();
        stats.tick();
        assert_eq!(Stats::get(&stats.commands_last_second), 1);
        stats.tick();
        assert_eq!(Stats::get(&stats.commands_last_second), 0);
    }

    #[test]
    fn every_error_code_has_a_counter() {
        let known = (1..1000).filter_map(kvstore_client::ErrorCode::from_code);
        assert!(known.map(|c| c as usize).all(|c| c < SLOTS));
    }
}
