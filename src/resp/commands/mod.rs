//! What each RESP command does, with Redis's reply types and error texts.
//!
//! [`COMMANDS`] is the table: name, arity, whether it writes, and the facts
//! `COMMAND` and `COMMAND DOCS` report. [`execute`] checks authentication and
//! arity, then runs the command's function, grouped by concept:
//! [`connection`] (PING, HELLO, AUTH, CLIENT, ...), [`strings`] (GET, SET,
//! INCR, ...), [`keyspace`] (DEL, KEYS, SCAN, FLUSHDB, ...), [`expiry`]
//! (EXPIRE, TTL, PERSIST, GETEX, ...), [`server`]
//! (INFO, CONFIG, COMMAND) and [`cluster`] (CLUSTER SLOTS, NODES, ...).
//!
//! Writes become native commands run through `crate::cmd`: they share the
//! native door's limits and semantics, and are answered once durable.

mod cluster;
mod connection;
mod expiry;
mod keyspace;
mod multi;
mod pubsub;
mod scripting;
mod server;
mod strings;

use bytes::Bytes;
use kvstore_client::{Command, ErrorCode, Reply};

use super::codec::Value;
use super::Shared;
use crate::cmd;
use crate::db::Db;
use crate::session::login::Login;
use expiry::Time;

/// One connection's state.
pub struct Session {
    /// `CLIENT ID`: unique among this server's connections.
    pub id: u64,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// 2 or 3 (`HELLO`).
    pub proto: u8,
    /// Logged in yet (always, without a token); failed attempts.
    pub login: Login,
    /// Close once the replies so far are written (QUIT, too many failures).
    pub closing: bool,
    /// `READONLY`: reads are served from this node's applied state, without
    /// the cluster's read barrier (a follower answers, maybe stale).
    pub readonly: bool,
    /// Between `MULTI` and `EXEC`: the commands queued.
    pub multi: Option<multi::Queue>,
    /// `WATCH`ed keys, each with the revision it had then (0: missing).
    pub watched: Vec<(Bytes, u64)>,
    /// Set up by the first SUBSCRIBE or PSUBSCRIBE.
    pub subscriber: Option<pubsub::Subscriber>,
    /// The stream of messages to send unasked from now on, until the
    /// session takes it (an empty one ends the last).
    pushes: Option<crate::session::Pushes<Value>>,
}

impl Session {
    pub fn new(id: u64, login: Login) -> Session {
        Session {
            id,
            name: None,
            proto: 2,
            login,
            closing: false,
            readonly: false,
            multi: None,
            watched: Vec::new(),
            subscriber: None,
            pushes: None,
        }
    }

    /// The messages of a new subscription, or the end of the last, once.
    pub fn pushes(&mut self) -> Option<crate::session::Pushes<Value>> {
        self.pushes.take()
    }

    /// The connection's keyspace notifications ended (it fell behind).
    pub fn unsubscribed_by_server(&self) -> bool {
        (self.subscriber.as_ref())
            .is_some_and(|s| s.ended.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// RESP2 in subscribed mode: only the pub/sub commands, PING and QUIT.
    fn subscribed_resp2(&self) -> bool {
        self.proto == 2 && self.subscriber.as_ref().is_some_and(|s| s.subscribed())
    }
}

/// What a command needs from the server.
pub struct Ctx<'a> {
    pub db: &'a Db,
    pub shared: &'a Shared,
}

/// A command's reply, or the write to log for it.
pub enum Outcome {
    Ready(Value),
    /// A native write for the log (the session hands it over, with the rest
    /// of its pipeline); `Shape` turns its native reply into RESP.
    Write(Command, Shape),
}

/// How a native reply reads in RESP.
#[derive(Debug, Clone)]
pub enum Shape {
    /// `Ok` → `+OK`.
    Ok,
    /// `Bool(true)` → `+OK`, `Bool(false)` → nil (SET with NX or XX).
    OkIfStored,
    /// `Bool` → `:1`/`:0`, `Int(n)` → `:n`.
    Int,
    /// `Value` → bulk string or nil.
    Bulk,
    /// `Txn` → `EXEC`'s array: each queued command's reply in its place
    /// (or the value it was given when queued), or a nil array if a
    /// watched key changed.
    Exec(Vec<multi::Queued>),
    /// `Txn` → `:1` if its compares held, else `:0` (a Lock script).
    Succeeded,
}

impl Shape {
    pub fn reply(self, reply: Reply) -> Value {
        match (self, reply) {
            (_, Reply::Error { code, message }) => error_for(code, &message),
            (Shape::Ok, Reply::Ok) | (Shape::OkIfStored, Reply::Bool(true)) => Value::Simple("OK"),
            (Shape::OkIfStored, Reply::Bool(false)) => Value::Nil,
            (Shape::Int, Reply::Bool(b)) => Value::Int(i64::from(b)),
            (Shape::Int, Reply::Int(n)) => Value::Int(n),
            (Shape::Bulk, Reply::Value(Some(v))) => Value::Bulk(v),
            (Shape::Bulk, Reply::Value(None)) => Value::Nil,
            (Shape::Exec(queued), Reply::Txn { succeeded, replies }) => {
                multi::exec_reply(queued, succeeded, replies)
            }
            (Shape::Succeeded, Reply::Txn { succeeded, .. }) => Value::Int(i64::from(succeeded)),
            (shape, other) => Value::error(format!(
                "ERR internal error: {other:?} does not fit a {shape:?} reply"
            )),
        }
    }
}

/// A native error as Redis would word it.
fn error_for(code: u32, message: &str) -> Value {
    match ErrorCode::from_code(code) {
        Some(ErrorCode::Unauthenticated) => Value::error("NOAUTH Authentication required."),
        Some(ErrorCode::AuthFailed) => wrong_pass(),
        Some(ErrorCode::NotAnInteger) => not_an_integer(),
        Some(ErrorCode::Overflow) => Value::error("ERR increment or decrement would overflow"),
        // Redis Cluster's words, which cluster clients retry on or report.
        Some(ErrorCode::TryAgain) => Value::error(format!("TRYAGAIN {message}")),
        Some(ErrorCode::NoSuchKey) => Value::error("ERR no such key"),
        Some(ErrorCode::CrossSlot) => {
            Value::error("CROSSSLOT Keys in request don't hash to the same slot")
        }
        _ => Value::error(format!("ERR {message}")),
    }
}

/// A read that `cmd` refused (a key over the limit, too many keys).
fn refused(reply: Reply) -> Outcome {
    Outcome::Ready(match reply {
        Reply::Error { code, message } => error_for(code, &message),
        other => Value::error(format!("ERR internal error: {other:?} is not a refusal")),
    })
}

fn wrong_pass() -> Value {
    Value::error("WRONGPASS invalid username-password pair or user is disabled.")
}

fn not_an_integer() -> Value {
    Value::error("ERR value is not an integer or out of range")
}

fn syntax_error() -> Value {
    Value::error("ERR syntax error")
}

fn ok() -> Outcome {
    Outcome::Ready(Value::Simple("OK"))
}

/// A native write; its reply is read through `shape`.
fn native(command: Command, shape: Shape) -> Outcome {
    Outcome::Write(command, shape)
}

/// A native read answered now.
fn native_read(command: Command, shape: Shape, ctx: &Ctx<'_>) -> Outcome {
    Outcome::Ready(shape.reply(cmd::read(command, ctx.db)))
}

/// One command of the table.
pub struct Spec {
    /// Lower case.
    pub name: &'static str,
    /// Redis's convention: `n` exactly `n` words (the name included), `-n`
    /// at least `n`.
    pub arity: i32,
    /// Goes through the log.
    pub write: bool,
    /// `COMMAND` flags.
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step between keys.
    pub keys: (i32, i32, i32),
    /// `COMMAND DOCS`.
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
}

const W: &[&str] = &["write"];
const WF: &[&str] = &["write", "fast"];
const RF: &[&str] = &["readonly", "fast"];
const R: &[&str] = &["readonly"];
const C: &[&str] = &["fast", "no-auth"];
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

macro_rules! spec {
    ($name:literal, $arity:literal, $write:literal, $flags:expr, $keys:expr, $group:literal, $since:literal, $summary:literal) => {
        Spec {
            name: $name,
            arity: $arity,
            write: $write,
            flags: $flags,
            keys: $keys,
            group: $group,
            since: $since,
            summary: $summary,
        }
    };
}

const PS: &[&str] = &["pubsub", "noscript", "loading", "stale"];

/// Every command the RESP door knows.
pub const COMMANDS: &[Spec] = &[
    spec!("append", 3, true, WF, (1, 1, 1), "string", "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    spec!("auth", -2, false, C, (0, 0, 0), "connection", "1.0.0", "Authenticates the connection."),
    spec!("client", -2, false, &["fast"], (0, 0, 0), "connection", "2.4.0", "CLIENT ID, SETNAME, GETNAME, SETINFO."),
    spec!("cluster", -2, false, &["loading", "stale"], (0, 0, 0), "cluster", "3.0.0", "CLUSTER KEYSLOT: the hash slot of a key, as Redis Cluster computes it."),
    spec!("command", -1, false, &["loading", "stale"], (0, 0, 0), "server", "2.8.13", "Returns detailed information about all commands."),
    spec!("config", -2, false, &["admin", "loading", "stale"], (0, 0, 0), "server", "2.0.0", "CONFIG GET: the values of configuration parameters; CONFIG SET notify-keyspace-events."),
    spec!("copy", -3, true, W, (1, 2, 1), "generic", "6.2.0", "Copies the value of a key to a new key (database 0 only)."),
    spec!("dbsize", 1, false, RF, (0, 0, 0), "server", "1.0.0", "Returns the number of keys in the database."),
    spec!("discard", 1, false, TX, (0, 0, 0), "transactions", "2.0.0", "Discards a transaction."),
    spec!("decr", 2, true, WF, (1, 1, 1), "string", "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec!("decrby", 3, true, WF, (1, 1, 1), "string", "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."),
    spec!("del", -2, true, W, (1, -1, 1), "generic", "1.0.0", "Deletes one or more keys, atomically and as one log record."),
    spec!("echo", 2, false, &["fast"], (0, 0, 0), "connection", "1.0.0", "Returns the given string."),
    spec!("eval", -3, true, &["noscript", "stale", "skip_monitor", "may_replicate", "no_mandatory_keys"], (0, 0, 0), "scripting", "2.6.0", "Runs one of redis-py's Lock scripts as an atomic transaction (no other Lua)."),
    spec!("evalsha", -3, true, &["noscript", "stale", "skip_monitor", "may_replicate", "no_mandatory_keys"], (0, 0, 0), "scripting", "2.6.0", "Runs one of redis-py's Lock scripts, by SHA1, as an atomic transaction (no other Lua)."),
    spec!("exec", 1, true, TX, (0, 0, 0), "transactions", "1.2.0", "Executes all commands in a transaction, as one atomic, durable write."),
    spec!("exists", -2, false, RF, (1, -1, 1), "generic", "1.0.0", "Determines whether one or more keys exist."),
    spec!("expire", -3, true, WF, (1, 1, 1), "generic", "1.0.0", "Sets the expiration time of a key in seconds."),
    spec!("expireat", -3, true, WF, (1, 1, 1), "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp."),
    spec!("expiretime", 2, false, RF, (1, 1, 1), "generic", "7.0.0", "Returns the expiration time of a key as a Unix timestamp."),
    spec!("flushall", -1, true, W, (0, 0, 0), "server", "1.0.0", "Removes all keys, durably, as one log record."),
    spec!("flushdb", -1, true, W, (0, 0, 0), "server", "1.0.0", "Removes all keys, durably, as one log record."),
    spec!("get", 2, false, RF, (1, 1, 1), "string", "1.0.0", "Returns the string value of a key."),
    spec!("getdel", 2, true, WF, (1, 1, 1), "string", "6.2.0", "Returns the string value of a key after deleting the key."),
    spec!("getex", -2, true, WF, (1, 1, 1), "string", "6.2.0", "Returns the string value of a key after setting its expiration time."),
    spec!("getrange", 4, false, R, (1, 1, 1), "string", "2.4.0", "Returns a substring of the string stored at a key."),
    spec!("getset", 3, true, WF, (1, 1, 1), "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value."),
    spec!("hello", -1, false, C, (0, 0, 0), "connection", "6.0.0", "Handshakes with the server: protocol version, AUTH, SETNAME."),
    spec!("incr", 2, true, WF, (1, 1, 1), "string", "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec!("incrby", 3, true, WF, (1, 1, 1), "string", "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec!("incrbyfloat", 3, true, WF, (1, 1, 1), "string", "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec!("info", -1, false, &["loading", "stale"], (0, 0, 0), "server", "1.0.0", "Returns information and statistics about the server."),
    spec!("keys", 2, false, R, (0, 0, 0), "generic", "1.0.0", "Returns all key names that match a pattern (bounded by the reply limit)."),
    spec!("mget", -2, false, RF, (1, -1, 1), "string", "1.0.0", "Atomically returns the string values of one or more keys (one instant across shards)."),
    spec!("mset", -3, true, W, (1, -1, 2), "string", "1.0.1", "Atomically creates or modifies the string values of one or more keys, as one log record."),
    spec!("msetnx", -3, true, W, (1, -1, 2), "string", "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist."),
    spec!("multi", 1, false, TX, (0, 0, 0), "transactions", "1.2.0", "Starts a transaction."),
    spec!("object", -2, false, R, (2, 2, 1), "generic", "2.2.3", "OBJECT ENCODING, FREQ, REFCOUNT: the internal encoding Redis would give a value."),
    spec!("persist", 2, true, WF, (1, 1, 1), "generic", "2.2.0", "Removes the expiration time of a key."),
    spec!("pexpire", -3, true, WF, (1, 1, 1), "generic", "2.6.0", "Sets the expiration time of a key in milliseconds."),
    spec!("pexpireat", -3, true, WF, (1, 1, 1), "generic", "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec!("pexpiretime", 2, false, RF, (1, 1, 1), "generic", "7.0.0", "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    spec!("ping", -1, false, &["fast"], (0, 0, 0), "connection", "1.0.0", "Returns the server's liveliness response."),
    spec!("psetex", 4, true, W, (1, 1, 1), "string", "2.6.0", "Sets the string value and expiration time in milliseconds of a key."),
    spec!("psubscribe", -2, false, PS, (0, 0, 0), "pubsub", "2.0.0", "Listens for keyspace notifications on channels that match patterns."),
    spec!("pttl", 2, false, RF, (1, 1, 1), "generic", "2.6.0", "Returns the expiration time in milliseconds of a key."),
    spec!("punsubscribe", -1, false, PS, (0, 0, 0), "pubsub", "2.0.0", "Stops listening on channels that match patterns."),
    spec!("quit", -1, false, C, (0, 0, 0), "connection", "1.0.0", "Closes the connection."),
    spec!("randomkey", 1, false, R, (0, 0, 0), "generic", "1.0.0", "Returns a random key name from the database."),
    spec!("readonly", 1, false, &["fast", "loading", "stale"], (0, 0, 0), "cluster", "3.0.0", "Lets this connection's reads be served by this node even when it is a follower (they may be stale)."),
    spec!("readwrite", 1, false, &["fast", "loading", "stale"], (0, 0, 0), "cluster", "3.0.0", "Ends READONLY: reads are linearizable again (a follower refuses them)."),
    spec!("rename", 3, true, W, (1, 2, 1), "generic", "1.0.0", "Renames a key and overwrites the destination."),
    spec!("renamenx", 3, true, WF, (1, 2, 1), "generic", "1.0.0", "Renames a key only when the target key name doesn't exist."),
    spec!("scan", -2, false, R, (0, 0, 0), "generic", "2.8.0", "Iterates over the key names in the database, in key order."),
    spec!("script", -2, false, &["noscript"], (0, 0, 0), "scripting", "2.6.0", "SCRIPT LOAD of redis-py's Lock scripts (no other Lua)."),
    spec!("select", 2, false, &["loading", "stale", "fast"], (0, 0, 0), "connection", "1.0.0", "Changes the selected database: only database 0 exists."),
    spec!("set", -3, true, W, (1, 1, 1), "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."),
    spec!("setex", 4, true, W, (1, 1, 1), "string", "2.0.0", "Sets the string value and expiration time of a key."),
    spec!("setnx", 3, true, WF, (1, 1, 1), "string", "1.0.0", "Set the string value of a key only when the key doesn't exist."),
    spec!("setrange", 4, true, W, (1, 1, 1), "string", "2.2.0", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."),
    spec!("strlen", 2, false, RF, (1, 1, 1), "string", "2.2.0", "Returns the length of a string value."),
    spec!("subscribe", -2, false, PS, (0, 0, 0), "pubsub", "2.0.0", "Listens for keyspace notifications on channels (__keyspace@0__:KEY, __keyevent@0__:EVENT)."),
    spec!("substr", 4, false, R, (1, 1, 1), "string", "1.0.0", "Returns a substring of the string stored at a key (GETRANGE's old name)."),
    spec!("touch", -2, false, RF, (1, -1, 1), "generic", "3.2.1", "Returns the number of existing keys specified (no access time is tracked)."),
    spec!("ttl", 2, false, RF, (1, 1, 1), "generic", "1.0.0", "Returns the expiration time in seconds of a key."),
    spec!("type", 2, false, RF, (1, 1, 1), "generic", "1.0.0", "Determines the type of value stored at a key: string, or none."),
    spec!("unlink", -2, true, WF, (1, -1, 1), "generic", "4.0.0", "Deletes one or more keys, like DEL."),
    spec!("unsubscribe", -1, false, PS, (0, 0, 0), "pubsub", "2.0.0", "Stops listening on channels."),
    spec!("unwatch", 1, false, TX, (0, 0, 0), "transactions", "2.2.0", "Forgets about all watched keys."),
    spec!("watch", -2, false, &["readonly", "noscript", "loading", "stale", "fast", "allow_busy"], (1, -1, 1), "transactions", "2.2.0", "Monitors changes to keys to determine the execution of a transaction."),
];

/// The table entry for a command name, any case.
pub fn spec(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether the request goes through the log (a read waits for the writes
/// pipelined before it).
pub fn writes(args: &[Bytes]) -> bool {
    args.first()
        .and_then(|name| spec(name))
        .is_some_and(|s| s.write)
}

/// Runs one request.
pub async fn execute(args: Vec<Bytes>, session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    let Some(name) = args.first() else {
        return Outcome::Ready(Value::error("ERR empty command"));
    };
    let Some(spec) = spec(name) else {
        if !session.login.authenticated() {
            return connection::refuse_unauthenticated(session);
        }
        multi::spoil(session);
        let mut message = format!(
            "ERR unknown command '{}', with args beginning with: ",
            clip(name)
        );
        for arg in &args[1..] {
            message.push_str(&format!("'{}' ", clip(arg)));
        }
        return Outcome::Ready(Value::error(message));
    };
    if !session.login.authenticated() && !matches!(spec.name, "auth" | "hello" | "quit") {
        return connection::refuse_unauthenticated(session);
    }
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        multi::spoil(session);
        return Outcome::Ready(Value::error(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        )));
    }
    if session.subscribed_resp2() && !PUBSUB_MODE.contains(&spec.name) {
        return Outcome::Ready(Value::error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        )));
    }
    // The first key decides the group (multi-key commands must stay in
    // it); position 0, the name, for a command that names no key.
    let first = usize::try_from(spec.keys.0).ok().filter(|&i| i > 0);
    let key = first.and_then(|i| args.get(i)).map(|k| &k[..]);
    let reads_here = spec.flags.contains(&"readonly") && session.readonly;
    // Cluster mode: a key whose group another node leads is sent there, as
    // Redis Cluster does.
    if let (Some(cluster), Some(key)) = (ctx.db.cluster(), key) {
        if let Some((slot, addr)) = cluster.redirect(key, reads_here) {
            return Outcome::Ready(Value::error(format!("MOVED {slot} {addr}")));
        }
    }
    if session.multi.is_some() && !multi::runs_at_once(spec.name) {
        return multi::queue(spec, &args[1..], session, ctx).await;
    }
    // Cluster mode: a read of data is linearizable, as on the native door,
    // unless the connection asked for this node's own state (READONLY).
    if spec.flags.contains(&"readonly") && !session.readonly {
        if let Err(e) = cmd::node_read_barrier(ctx.db, key).await {
            return Outcome::Ready(error_for(cmd::error_code(&e) as u32, &e.to_string()));
        }
    }
    run(spec, &args[1..], session, ctx).await
}

/// What a RESP2 connection may send while subscribed.
const PUBSUB_MODE: [&str; 6] = [
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "ping",
    "quit",
];

/// Runs a command whose name, arity, login and group were checked.
async fn run(spec: &Spec, args: &[Bytes], session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    match spec.name {
        "auth" => connection::auth(args, session, ctx).await,
        "client" => connection::client(args, session),
        "echo" => Outcome::Ready(Value::Bulk(args[0].clone())),
        "hello" => connection::hello(args, session, ctx).await,
        "ping" if session.subscribed_resp2() => pubsub::ping(args),
        "ping" => connection::ping(args),
        "subscribe" => pubsub::subscribe(args, false, session, ctx),
        "psubscribe" => pubsub::subscribe(args, true, session, ctx),
        "unsubscribe" => pubsub::unsubscribe(args, false, session),
        "punsubscribe" => pubsub::unsubscribe(args, true, session),
        "quit" => {
            session.closing = true;
            ok()
        }
        "readonly" | "readwrite" => {
            session.readonly = spec.name == "readonly";
            ok()
        }
        "select" => connection::select(args),
        "cluster" => cluster::cluster(args, ctx).await,
        "append" => strings::append(args),
        "decr" => strings::incr(&args[0], -1),
        "decrby" => strings::incr_by(args, true),
        "get" => native_read(
            Command::Get {
                key: args[0].clone(),
            },
            Shape::Bulk,
            ctx,
        ),
        "getdel" => native(
            Command::GetDel {
                key: args[0].clone(),
            },
            Shape::Bulk,
        ),
        "getset" => strings::getset(args),
        "getrange" | "substr" => strings::getrange(args, ctx),
        "incr" => strings::incr(&args[0], 1),
        "incrby" => strings::incr_by(args, false),
        "mget" => strings::mget(args, ctx),
        "mset" => strings::mset(args, false),
        "msetnx" => strings::mset(args, true),
        "setrange" => strings::setrange(args),
        "incrbyfloat" => strings::incrbyfloat(args),
        "copy" => keyspace::copy(args),
        "rename" => keyspace::rename(args, true),
        "renamenx" => keyspace::rename(args, false),
        "randomkey" => keyspace::randomkey(ctx).await,
        "set" => strings::set(args),
        "setnx" => strings::setnx(args),
        "strlen" => strings::strlen(args, ctx),
        "dbsize" => Outcome::Ready(Value::Int(cmd::keys::count(ctx.db) as i64)),
        "del" | "unlink" => keyspace::del(args),
        "exists" | "touch" => keyspace::exists(args, ctx),
        "object" => keyspace::object(args, ctx),
        "flushall" | "flushdb" => keyspace::flush(args),
        "keys" => keyspace::keys(args, ctx).await,
        "expire" => expiry::expire(args, Time::Ex, "expire"),
        "pexpire" => expiry::expire(args, Time::Px, "pexpire"),
        "expireat" => expiry::expire(args, Time::ExAt, "expireat"),
        "pexpireat" => expiry::expire(args, Time::PxAt, "pexpireat"),
        "ttl" => expiry::ttl(args, false, true, ctx),
        "pttl" => expiry::ttl(args, false, false, ctx),
        "expiretime" => expiry::ttl(args, true, true, ctx),
        "pexpiretime" => expiry::ttl(args, true, false, ctx),
        "persist" => expiry::persist(args),
        "getex" => expiry::getex(args),
        "setex" => expiry::setex(args, Time::Ex, "setex"),
        "psetex" => expiry::setex(args, Time::Px, "psetex"),
        "scan" => keyspace::scan(args, ctx).await,
        "type" => keyspace::kind(args, ctx),
        "command" => server::command(args),
        "config" => server::config(args, ctx),
        "info" => server::info(args, ctx),
        "multi" => multi::multi(session),
        "eval" => scripting::eval(args, false, ctx),
        "evalsha" => scripting::eval(args, true, ctx),
        "script" => scripting::script(args),
        "exec" => multi::exec(session),
        "discard" => multi::discard(session),
        "watch" => multi::watch(args, session, ctx),
        "unwatch" => {
            session.watched.clear();
            ok()
        }
        other => Outcome::Ready(Value::error(format!(
            "ERR command '{other}' is in the table but has no implementation"
        ))),
    }
}

/// An argument quoted in an error message: lossy text, at most 128 bytes.
fn clip(arg: &Bytes) -> String {
    let text = super::text(arg);
    match text.char_indices().nth(128) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text,
    }
}

/// Whether `arg` is `word`, any case.
fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}
