//! Redis keyspace notifications: SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE,
//! PUNSUBSCRIBE and `notify-keyspace-events` (docs/resp.md#keyspace-notifications).
//! A subscribed connection reads the change feed (`crate::feed`) from now
//! on and turns each change into Redis's `__keyspace@0__:KEY` and
//! `__keyevent@0__:EVENT` messages, for the classes the server's
//! `notify-keyspace-events` names. There is no PUBLISH: the only channels
//! with messages are the keyspace's.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use kvstore_client::{Event, EventKind, Reply};
use parking_lot::Mutex;

use super::{Ctx, Outcome, Session};
use crate::cmd::watch;
use crate::resp::codec::Value;
use crate::resp::glob;
use crate::session::Pushes;

const KEYSPACE: u32 = 1 << 0;
const KEYEVENT: u32 = 1 << 1;
const GENERIC: u32 = 1 << 2;
const STRING: u32 = 1 << 3;
const EXPIRED: u32 = 1 << 8;
const NEW: u32 = 1 << 12;

/// The flag letters in the order Redis writes them, with their bits; the
/// classes kvstore has no data for (lists, sets, ...) are kept and shown,
/// and never notify.
const CLASSES: [(u8, u32); 14] = [
    (b'g', GENERIC),
    (b'$', STRING),
    (b'l', 1 << 4),
    (b's', 1 << 5),
    (b'h', 1 << 6),
    (b'z', 1 << 7),
    (b'x', EXPIRED),
    (b'e', 1 << 9),
    (b't', 1 << 10),
    (b'd', 1 << 11),
    (b'n', NEW),
    (b'K', KEYSPACE),
    (b'E', KEYEVENT),
    (b'm', 1 << 13),
];

/// `A`: the classes from `g` to `d`.
const ALL: u32 = (1 << 12) - (1 << 2);

/// `notify-keyspace-events` as flags; `None` for a letter Redis does not
/// know.
pub fn parse_classes(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0, |flags, &letter| match letter {
        b'A' => Some(flags | ALL),
        letter => CLASSES
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, bit)| flags | bit),
    })
}

/// Flags as `CONFIG GET notify-keyspace-events` writes them.
pub fn format_classes(flags: u32) -> String {
    let mut text = String::new();
    let mut shown = 0;
    if flags & ALL == ALL {
        text.push('A');
        // Redis then writes none of the other class letters, not even `n`.
        shown = ALL | NEW;
    }
    for (letter, bit) in CLASSES {
        if flags & bit != 0 && shown & bit == 0 {
            text.push(letter as char);
        }
    }
    text
}

/// A change as Redis names it: its class and event name.
fn redis_events(kind: &EventKind) -> &'static [(u32, &'static str)] {
    match kind {
        EventKind::Put { deadline: None, .. } => &[(STRING, "set")],
        EventKind::Put { .. } => &[(STRING, "set"), (GENERIC, "expire")],
        EventKind::Delete => &[(GENERIC, "del")],
        EventKind::Expired => &[(EXPIRED, "expired")],
        EventKind::Deadline(Some(_)) => &[(GENERIC, "expire")],
        EventKind::Deadline(None) => &[(GENERIC, "persist")],
        // Redis's FLUSHALL notifies nothing either.
        EventKind::Clear => &[],
    }
}

/// The (channel, message) pairs Redis would publish for `event`.
fn messages(event: &Event, flags: u32) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::new();
    for &(class, name) in redis_events(&event.kind) {
        if flags & class == 0 {
            continue;
        }
        if flags & KEYSPACE != 0 {
            let channel = [&b"__keyspace@0__:"[..], &event.key].concat();
            out.push((channel.into(), Bytes::from_static(name.as_bytes())));
        }
        if flags & KEYEVENT != 0 {
            let channel = format!("__keyevent@0__:{name}");
            out.push((channel.into(), event.key.clone()));
        }
    }
    out
}

/// One connection's subscriptions, shared with its stream of messages.
#[derive(Default)]
pub struct Subscriptions {
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
}

impl Subscriptions {
    fn list(&mut self, patterns: bool) -> &mut Vec<Bytes> {
        if patterns {
            &mut self.patterns
        } else {
            &mut self.channels
        }
    }

    /// Adds each of `names`; a confirmation for each.
    fn add(&mut self, names: &[Bytes], patterns: bool) -> Vec<Value> {
        let kind = if patterns { "psubscribe" } else { "subscribe" };
        let mut replies = Vec::new();
        for name in names {
            let list = self.list(patterns);
            if !list.contains(name) {
                list.push(name.clone());
            }
            replies.push(confirmation(kind, Value::Bulk(name.clone()), self.count()));
        }
        replies
    }

    /// Removes each of `names`, or all; a confirmation for each (one with
    /// nil if there were none).
    fn remove(&mut self, names: &[Bytes], patterns: bool) -> Vec<Value> {
        let kind = if patterns {
            "punsubscribe"
        } else {
            "unsubscribe"
        };
        let names = match names {
            [] => self.list(patterns).clone(),
            names => names.to_vec(),
        };
        let mut replies = Vec::new();
        for name in names {
            self.list(patterns).retain(|n| *n != name);
            replies.push(confirmation(kind, Value::Bulk(name), self.count()));
        }
        if replies.is_empty() {
            replies.push(confirmation(kind, Value::Nil, self.count()));
        }
        replies
    }

    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    /// The messages, as this connection receives them, for one published
    /// (channel, message).
    fn deliver(&self, channel: &Bytes, message: &Bytes, out: &mut Vec<Value>) {
        if self.channels.contains(channel) {
            let words = [&b"message"[..], channel, message];
            out.push(push(
                words.iter().map(|w| Value::Bulk(Bytes::copy_from_slice(w))),
            ));
        }
        for pattern in self.patterns.iter().filter(|p| glob::matches(p, channel)) {
            let words = [
                Value::text("pmessage"),
                Value::Bulk(pattern.clone()),
                Value::Bulk(channel.clone()),
                Value::Bulk(message.clone()),
            ];
            out.push(push(words));
        }
    }
}

fn push(items: impl IntoIterator<Item = Value>) -> Value {
    Value::Push(items.into_iter().collect())
}

/// A connection's subscriber state: set up by its first SUBSCRIBE or
/// PSUBSCRIBE.
pub struct Subscriber {
    subscriptions: Arc<Mutex<Subscriptions>>,
    /// The feed ended the stream (the connection fell too far behind, or the
    /// server is stopping): close the connection, as Redis closes a
    /// subscriber over its output limit.
    pub ended: Arc<AtomicBool>,
}

impl Subscriber {
    pub fn subscribed(&self) -> bool {
        self.subscriptions.lock().count() > 0
    }
}

/// SUBSCRIBE channel... and PSUBSCRIBE pattern...: a confirmation for each.
pub(super) fn subscribe(
    args: &[Bytes],
    patterns: bool,
    session: &mut Session,
    ctx: &Ctx<'_>,
) -> Outcome {
    let subscriber = match &mut session.subscriber {
        Some(subscriber) => subscriber,
        none => match start(ctx) {
            Ok((subscriber, pushes)) => {
                session.pushes = Some(pushes);
                none.insert(subscriber)
            }
            Err(refused) => return super::refused(refused),
        },
    };
    let replies = subscriber.subscriptions.lock().add(args, patterns);
    Outcome::Ready(Value::Several(replies))
}

/// UNSUBSCRIBE [channel...] and PUNSUBSCRIBE [pattern...]: each named, or
/// all; a confirmation for each (one with nil if there were none).
pub(super) fn unsubscribe(args: &[Bytes], patterns: bool, session: &mut Session) -> Outcome {
    let replies = match &session.subscriber {
        Some(subscriber) => subscriber.subscriptions.lock().remove(args, patterns),
        None => Subscriptions::default().remove(args, patterns),
    };
    // Nothing to listen for: stop reading the feed, which would otherwise
    // end the connection as slow while it sends other commands.
    if session.subscriber.as_ref().is_some_and(|s| !s.subscribed()) {
        session.subscriber = None;
        session.pushes = Some(stream::empty().boxed());
    }
    Outcome::Ready(Value::Several(replies))
}

fn confirmation(kind: &'static str, name: Value, count: i64) -> Value {
    push([Value::text(kind), name, Value::Int(count)])
}

/// PING [message] while subscribed in RESP2: `pong` and the message.
pub(super) fn ping(args: &[Bytes]) -> Outcome {
    let message = args.first().cloned().unwrap_or_default();
    Outcome::Ready(Value::Array(vec![
        Value::text("pong"),
        Value::Bulk(message),
    ]))
}

/// Watches every key from now, for the messages of `ctx`'s classes.
fn start(ctx: &Ctx<'_>) -> Result<(Subscriber, Pushes<Value>), Reply> {
    let (_, replies) = watch::start(Bytes::new(), 0, ctx.db)?;
    let subscriptions = Arc::new(Mutex::new(Subscriptions::default()));
    let ended = Arc::new(AtomicBool::new(false));
    let classes = ctx.shared.notify.clone();
    let (subs, done) = (subscriptions.clone(), ended.clone());
    let pushes = replies
        .flat_map(move |reply| {
            let out = match reply {
                Reply::Events { events, .. } => notify(&events, &classes, &subs.lock()),
                _ => {
                    done.store(true, Ordering::Relaxed);
                    Vec::new()
                }
            };
            futures_util::stream::iter(out)
        })
        .boxed();
    Ok((
        Subscriber {
            subscriptions,
            ended,
        },
        pushes,
    ))
}

/// The messages `subs` receives for `events`.
fn notify(events: &[Event], classes: &AtomicU32, subs: &Subscriptions) -> Vec<Value> {
    let flags = classes.load(Ordering::Relaxed);
    let mut out = Vec::new();
    if flags & (KEYSPACE | KEYEVENT) == 0 || subs.count() == 0 {
        return out;
    }
    for event in events {
        for (channel, message) in messages(event, flags) {
            subs.deliver(&channel, &message, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests;
