//! A client's connections: a few to each server it talks to (its target,
//! and in a sharded cluster each group's leader), opened on demand, used in
//! turn, and replaced once broken.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::mux::Mux;
use crate::Error;

/// The connections of one client, by server address.
pub(crate) struct Pools {
    /// Connections per server.
    size: usize,
    by_addr: std::sync::Mutex<HashMap<String, Arc<Pool>>>,
}

/// The connections to one server. A tokio mutex each: held across the
/// connect, so that callers wait for one connection rather than open many.
struct Pool {
    connections: Vec<Mutex<Option<Mux>>>,
    /// Round-robin position.
    next: AtomicUsize,
}

impl Pools {
    /// `size` connections per server (at least one).
    pub(crate) fn new(size: usize) -> Pools {
        Pools {
            size: size.max(1),
            by_addr: Default::default(),
        }
    }

    /// The next connection to `addr` in turn, opened with `open` if there
    /// is none yet or it broke.
    pub(crate) async fn get<F>(&self, addr: &str, open: impl FnOnce() -> F) -> Result<Mux, Error>
    where
        F: Future<Output = Result<Mux, Error>>,
    {
        let pool = self.pool(addr);
        let at = pool.next.fetch_add(1, Ordering::Relaxed) % pool.connections.len();
        let mut connection = pool.connections[at].lock().await;
        if let Some(mux) = connection.as_ref().filter(|mux| mux.is_alive()) {
            return Ok(mux.clone());
        }
        if let Some(old) = connection.take() {
            old.close();
        }
        let mux = open().await?;
        *connection = Some(mux.clone());
        Ok(mux)
    }

    fn pool(&self, addr: &str) -> Arc<Pool> {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = by_addr.get(addr) {
            return pool.clone();
        }
        let pool = Arc::new(Pool {
            connections: (0..self.size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        });
        by_addr.insert(addr.to_string(), pool.clone());
        pool
    }
}
