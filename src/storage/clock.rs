//! The wall clock that says when a key's deadline has passed
//! (docs/design/expiry.md): the system's in a server, one the test sets in
//! unit tests, so that expiry is tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// A time that moves only when set.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A clock that reads `ms` until it is set again.
    pub fn manual(ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(ms)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock to `ms` (the system clock is not ours to set).
    pub fn set(&self, ms: u64) {
        if let Clock::Manual(now) = self {
            now.store(ms, Ordering::Relaxed);
        }
    }
}

/// The system's time; 0 before the epoch (a clock set that far back
/// expires nothing).
pub fn system_ms() -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH)).map_or(0, |d| d.as_millis() as u64)
}
