//! Server-wide counters, shared by both doors (native and RESP): what `INFO`
//! reports about clients and commands. Relaxed atomics: each figure is exact
//! on its own, the set is not one instant's snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Stats {
    /// For uptime.
    pub started: Instant,
    /// Connections being served now, both doors.
    pub connections: AtomicU64,
    /// Connections accepted since start (refused ones not included).
    pub connections_total: AtomicU64,
    /// Connections refused at the connection limit.
    pub connections_rejected: AtomicU64,
    /// Requests answered since start, both doors.
    pub commands: AtomicU64,
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

    pub fn command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
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
