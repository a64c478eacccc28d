//! MULTI, EXEC, DISCARD, WATCH and UNWATCH: Redis transactions, built on
//! the native `Txn` (docs/transactions.md#redis-transactions).
//!
//! Between MULTI and EXEC a command is checked as Redis checks it then (a
//! known name, its arity) and queued as the native command it would run;
//! EXEC sends them as one `Txn` whose compares are the WATCHed keys'
//! revisions as read at WATCH time, so the block is one atomic, durable
//! write, and a watched key written since makes EXEC answer a nil array.

use bytes::Bytes;
use kvstore_client::{Command, Compare, CompareOp, Reply, Target};

use super::{error_for, ok, run, Ctx, Outcome, Session, Shape, Spec};
use crate::cmd;
use crate::resp::codec::Value;

/// What MULTI has queued.
#[derive(Debug, Default)]
pub struct Queue {
    /// The native commands, in order.
    commands: Vec<Command>,
    /// Each queued command's place in EXEC's reply.
    replies: Vec<Queued>,
    /// Roughly the bytes the commands hold (`cmd::size`).
    bytes: usize,
    /// A command was refused when queued: EXEC discards the transaction.
    spoiled: bool,
}

/// A queued command's place in EXEC's reply.
#[derive(Debug, Clone)]
pub enum Queued {
    /// The reply of the next native command, read as the shape says.
    Run(Shape),
    /// A reply known when it was queued: an error Redis would give at EXEC
    /// (a syntax error), or what a command that needs no data answers.
    Known(Value),
    /// MGET: the values of the next this many native `Get`s, as an array.
    Values(usize),
    /// EXISTS: how many of the next this many native `Exists` held.
    Count(usize),
}

/// Commands that run at once inside MULTI rather than being queued.
pub fn runs_at_once(name: &str) -> bool {
    matches!(name, "exec" | "discard" | "multi" | "watch" | "quit")
}

/// Marks the transaction being queued, if any, to be discarded at EXEC.
pub fn spoil(session: &mut Session) {
    if let Some(queue) = &mut session.multi {
        queue.spoiled = true;
    }
}

pub fn multi(session: &mut Session) -> Outcome {
    if session.multi.is_some() {
        return Outcome::Ready(Value::error("ERR MULTI calls can not be nested"));
    }
    session.multi = Some(Queue::default());
    ok()
}

pub fn discard(session: &mut Session) -> Outcome {
    if session.multi.take().is_none() {
        return Outcome::Ready(Value::error("ERR DISCARD without MULTI"));
    }
    session.watched.clear();
    ok()
}

/// Notes each key's revision now (0 for a missing key).
pub fn watch(keys: &[Bytes], session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    if session.multi.is_some() {
        return Outcome::Ready(Value::error("ERR WATCH inside MULTI is not allowed"));
    }
    for key in keys {
        let modified = match cmd::get::revised(key, ctx.db) {
            Ok(found) => found.map_or(0, |(_, revisions)| revisions.modified),
            Err(refusal) => return super::refused(refusal),
        };
        session.watched.push((key.clone(), modified));
    }
    ok()
}

/// Queues a command given between MULTI and EXEC.
pub async fn queue(spec: &Spec, args: &[Bytes], session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    let keys = |make: fn(Bytes) -> Command| args.iter().cloned().map(make).collect::<Vec<_>>();
    let (commands, reply) = match spec.name {
        // Reads run in the transaction, a native read per key.
        "get" => (keys(|key| Command::Get { key }), Queued::Run(Shape::Bulk)),
        "mget" => (keys(|key| Command::Get { key }), Queued::Values(args.len())),
        "exists" => (
            keys(|key| Command::Exists { key }),
            Queued::Count(args.len()),
        ),
        // Queued as Redis queues it: the watches still decide this EXEC.
        "unwatch" => (Vec::new(), Queued::Known(Value::Simple("OK"))),
        "ping" | "echo" => match run(spec, args, session, ctx).await {
            Outcome::Ready(value) => (Vec::new(), Queued::Known(value)),
            Outcome::Write(..) => (Vec::new(), Queued::Known(Value::Simple("OK"))),
        },
        name if !spec.write => {
            spoil(session);
            return refused(format!(
                "'{name}' cannot be queued in MULTI here: a transaction reads with GET, MGET and EXISTS"
            ));
        }
        _ => match run(spec, args, session, ctx).await {
            Outcome::Write(command, shape) if command.in_txn() => {
                (vec![command], Queued::Run(shape))
            }
            Outcome::Write(command, _) => {
                spoil(session);
                let name = spec.name.to_uppercase();
                return refused(format!(
                    "{name} ({}) cannot be part of a transaction",
                    command.name()
                ));
            }
            Outcome::Ready(value) => (Vec::new(), Queued::Known(value)),
        },
    };
    let queue = session.multi.get_or_insert_with(Queue::default);
    // What one native Txn may hold: --max-bulk-items commands, a frame.
    let limits = &ctx.db.limits;
    let bytes = queue.bytes + commands.iter().map(cmd::size).sum::<usize>();
    if queue.commands.len() + commands.len() > limits.max_bulk_items || bytes > limits.max_frame {
        queue.spoiled = true;
        return refused(format!(
            "a transaction holds at most {} commands (--max-bulk-items) and {} bytes (--max-frame)",
            limits.max_bulk_items, limits.max_frame
        ));
    }
    queue.bytes = bytes;
    queue.commands.extend(commands);
    queue.replies.push(reply);
    Outcome::Ready(Value::Simple("QUEUED"))
}

/// An error Redis does not have, worded as kvstore's.
fn refused(message: String) -> Outcome {
    Outcome::Ready(Value::error(format!("ERR kvstore: {message}")))
}

/// Sends what MULTI queued as one native transaction, conditional on the
/// watched keys' revisions; forgets the watches either way.
pub fn exec(session: &mut Session) -> Outcome {
    let Some(queue) = session.multi.take() else {
        return Outcome::Ready(Value::error("ERR EXEC without MULTI"));
    };
    let watched = std::mem::take(&mut session.watched);
    if queue.spoiled {
        return Outcome::Ready(Value::error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }
    let compare = (watched.into_iter())
        .map(|(key, seen)| Compare {
            key,
            target: Target::ModRevision(seen),
            op: CompareOp::Equal,
        })
        .collect();
    let txn = Command::Txn {
        compare,
        success: queue.commands,
        failure: Vec::new(),
    };
    Outcome::Write(txn, Shape::Exec(queue.replies))
}

/// EXEC's reply from the transaction's: each queued command's in its place,
/// or a nil array if a watched key had changed.
pub fn exec_reply(queued: Vec<Queued>, succeeded: bool, replies: Vec<Reply>) -> Value {
    if !succeeded {
        return Value::NilArray;
    }
    let mut replies = replies.into_iter();
    let mut next = |n: usize| replies.by_ref().take(n).collect::<Vec<_>>();
    let each = queued.into_iter().map(|queued| match queued {
        Queued::Known(value) => value,
        Queued::Run(shape) => match next(1).pop() {
            Some(reply) => shape.reply(reply),
            None => error_for(0, "internal error: a queued command got no reply"),
        },
        Queued::Values(n) => {
            Value::Array(next(n).into_iter().map(|r| Shape::Bulk.reply(r)).collect())
        }
        Queued::Count(n) => {
            let found = next(n)
                .into_iter()
                .filter(|r| *r == Reply::Bool(true))
                .count();
            Value::Int(found as i64)
        }
    });
    Value::Array(each.collect())
}
