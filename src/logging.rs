//! The server's log. openraft logs a WARN or ERROR line for every read
//! whose leadership check cannot reach a node and for every failed
//! replication message: with one node down that is a line per read, which
//! buries everything else. So its warnings and errors are rate-limited per
//! log statement: the first in each interval is written, the rest of that
//! interval dropped. kvstore's own lines are not limited.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::prelude::*;

/// How often one openraft log statement may write a WARN or ERROR line.
pub const OPENRAFT_INTERVAL: Duration = Duration::from_secs(5);

/// Sets up the log: `RUST_LOG` (default `info`) to standard error, in
/// colour only when standard error is a terminal (a log file or a pipe
/// gets plain text, never escape codes).
pub fn init() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr on a full disk) is
        // dropped; reporting it would panic the thread that logged it.
        .log_internal_errors(false)
        .with_filter(filter)
        .with_filter(RateLimit::new(OPENRAFT_INTERVAL));
    tracing_subscriber::registry().with(layer).init();
}

/// Lets through at most one event per log statement per interval, for
/// openraft's warnings and errors.
pub struct RateLimit {
    interval: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

fn limited(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("openraft") && *meta.level() <= Level::WARN && meta.is_event()
}

impl RateLimit {
    pub fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            last: Mutex::default(),
        }
    }

    /// Whether an event of `site` at `now` is written.
    pub fn allows(&self, site: Identifier, now: Instant) -> bool {
        let mut last = self.last.lock();
        match last.get(&site) {
            Some(at) if now.saturating_duration_since(*at) < self.interval => false,
            _ => {
                last.insert(site, now);
                true
            }
        }
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !limited(meta) || self.allows(meta.callsite(), Instant::now())
    }

    /// Decided per event for the limited statements, once for the others.
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match limited(meta) {
            true => Interest::sometimes(),
            false => Interest::always(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not zero-sized: two statics get two addresses, so two identifiers.
    struct Site(#[allow(dead_code)] u8);
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!("not needed to compare identifiers")
        }
    }
    static A: Site = Site(1);
    static B: Site = Site(2);

    #[test]
    fn one_line_per_statement_per_interval() {
        let limit = RateLimit::new(Duration::from_secs(5));
        let (a, b) = (Identifier(&A), Identifier(&B));
        let t0 = Instant::now();
        assert!(limit.allows(a.clone(), t0));
        assert!(!limit.allows(a.clone(), t0 + Duration::from_secs(1)));
        assert!(
            limit.allows(b.clone(), t0 + Duration::from_secs(1)),
            "another statement"
        );
        assert!(!limit.allows(a.clone(), t0 + Duration::from_millis(4_999)));
        assert!(limit.allows(a, t0 + Duration::from_secs(5)));
    }
}
