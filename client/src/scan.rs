//! [`ScanQuery`]: which key-value pairs `Client::scan` walks, and how it asks
//! for the page after each one.

use bytes::Bytes;

use crate::Command;

/// The pairs of a scan: those whose keys start with a prefix
/// ([`ScanQuery::prefix`]) or lie in a half-open range
/// ([`ScanQuery::range`]), ascending, or descending after
/// [`ScanQuery::reverse`].
///
/// ```
/// use kvstore_client::ScanQuery;
/// let users = ScanQuery::prefix("user:");
/// let newest_first = ScanQuery::range("log:2026-11-01", Some("log:2026-12-01")).reverse();
/// # let _ = (users, newest_first);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanQuery {
    /// What the next page asks for.
    kind: Kind,
    /// Descending key order.
    reverse: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Prefix {
        prefix: Bytes,
        /// The last key already returned.
        start_after: Option<Bytes>,
    },
    Range {
        start: Bytes,
        end: Option<Bytes>,
    },
}

impl ScanQuery {
    /// Pairs whose keys start with `prefix` (empty: every pair).
    pub fn prefix(prefix: impl AsRef<[u8]>) -> ScanQuery {
        ScanQuery {
            kind: Kind::Prefix {
                prefix: Bytes::copy_from_slice(prefix.as_ref()),
                start_after: None,
            },
            reverse: false,
        }
    }

    /// Pairs whose keys are at least `start` and below `end` (`None`: no end).
    pub fn range(start: impl AsRef<[u8]>, end: Option<impl AsRef<[u8]>>) -> ScanQuery {
        ScanQuery {
            kind: Kind::Range {
                start: Bytes::copy_from_slice(start.as_ref()),
                end: end.map(|e| Bytes::copy_from_slice(e.as_ref())),
            },
            reverse: false,
        }
    }

    /// The same pairs, largest key first.
    pub fn reverse(mut self) -> ScanQuery {
        self.reverse = true;
        self
    }

    /// The request for the next page of at most `limit` pairs (0: the
    /// server's default page).
    pub fn command(&self, limit: u32) -> Command {
        let reverse = self.reverse;
        match &self.kind {
            Kind::Prefix {
                prefix,
                start_after,
            } => Command::Scan {
                prefix: prefix.clone(),
                start_after: start_after.clone(),
                limit,
                reverse,
            },
            Kind::Range { start, end } => Command::Range {
                start: start.clone(),
                end: end.clone(),
                limit,
                reverse,
            },
        }
    }

    /// Moves past `last`, the last key of a page, so that [`ScanQuery::command`]
    /// asks for the page after it.
    pub fn advance(&mut self, last: &[u8]) {
        match (&mut self.kind, self.reverse) {
            (Kind::Prefix { start_after, .. }, _) => {
                *start_after = Some(Bytes::copy_from_slice(last));
            }
            (Kind::Range { start, .. }, false) => {
                // The smallest key after `last`.
                let mut next = last.to_vec();
                next.push(0);
                *start = Bytes::from(next);
            }
            (Kind::Range { end, .. }, true) => *end = Some(Bytes::copy_from_slice(last)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_asks_for_what_follows_the_last_key() {
        let mut q = ScanQuery::range("a", Some("z"));
        q.advance(b"k");
        assert!(
            matches!(q.command(5), Command::Range { start, end: Some(end), limit: 5, reverse: false }
            if start == "k\0" && end == "z")
        );
        let mut q = ScanQuery::range("a", Some("z")).reverse();
        q.advance(b"k");
        assert!(
            matches!(q.command(0), Command::Range { start, end: Some(end), reverse: true, .. }
            if start == "a" && end == "k")
        );
        let mut q = ScanQuery::prefix("p").reverse();
        q.advance(b"p9");
        assert!(
            matches!(q.command(0), Command::Scan { prefix, start_after: Some(after), reverse: true, .. }
            if prefix == "p" && after == "p9")
        );
    }
}
