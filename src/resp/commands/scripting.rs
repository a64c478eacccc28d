//! EVAL, EVALSHA and SCRIPT LOAD for the three Lua scripts of redis-py's
//! `Lock` (release, extend, reacquire), and nothing else: kvstore runs no
//! Lua. Each is recognised by its SHA1 and run as the native transaction
//! that does what the script does, atomically
//! (docs/transactions.md#redis-pys-lock).

use bytes::Bytes;
use kvstore_client::{Command, Compare, CompareOp, ExpireWhen, Expiry, Reply, Target};

use super::{Ctx, Outcome, Shape};
use crate::cmd;
use crate::resp::codec::Value;

/// What a recognised script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// `KEYS[1]` removed if it holds the token `ARGV[1]`.
    Release,
    /// `KEYS[1]`'s time to live set to `ARGV[2]` ms, or lengthened by it
    /// (`ARGV[3]` "0"), if it holds the token and has a time to live.
    Extend,
    /// `KEYS[1]`'s time to live set to `ARGV[2]` ms if it holds the token.
    Reacquire,
}

/// The SHA1s of redis-py's `Lock.LUA_*_SCRIPT` texts (the same in
/// redis-py 4 and 5), as Redis names scripts.
const SCRIPTS: [(&str, Script); 3] = [
    ("c3f8721cbb97f72bc19e972846bd7aaf91901658", Script::Release),
    ("a4e8783852e6b949f9ef3a97212805108459a890", Script::Extend),
    (
        "1cac51482acf5858da00f6d685d68f886cd6b6b2",
        Script::Reacquire,
    ),
];

/// A script's SHA1 in lower-case hex, as Redis names it.
fn sha1(script: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, script);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn known(sha: &[u8]) -> Option<Script> {
    let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
    SCRIPTS
        .iter()
        .find(|(s, _)| *s == sha)
        .map(|(_, script)| *script)
}

fn no_lua() -> Outcome {
    Outcome::Ready(Value::error(
        "ERR kvstore runs no Lua: only redis-py's Lock scripts are recognised (docs/resp.md)",
    ))
}

/// `SCRIPT LOAD script`: the SHA1 of a recognised script.
pub fn script(args: &[Bytes]) -> Outcome {
    match args {
        [sub, text] if super::is(sub, "load") => match known(sha1(text).as_bytes()) {
            Some(_) => Outcome::Ready(Value::text(&sha1(text))),
            None => no_lua(),
        },
        [sub, ..] => Outcome::Ready(Value::error(format!(
            "ERR unknown subcommand '{}'. kvstore knows only SCRIPT LOAD",
            super::clip(sub)
        ))),
        [] => Outcome::Ready(Value::error(
            "ERR wrong number of arguments for 'script' command",
        )),
    }
}

/// `EVAL script numkeys key... arg...`, or `EVALSHA sha1 ...` (`by_sha`).
pub fn eval(args: &[Bytes], by_sha: bool, ctx: &Ctx<'_>) -> Outcome {
    let script = match by_sha {
        true => known(&args[0]),
        false => known(sha1(&args[0]).as_bytes()),
    };
    let Some(script) = script else {
        return match by_sha {
            true => Outcome::Ready(Value::error(
                "NOSCRIPT No matching script. Please use EVAL.",
            )),
            false => no_lua(),
        };
    };
    let (key, argv) = match args {
        [_, numkeys, key, argv @ ..] if &numkeys[..] == b"1" => (key.clone(), argv),
        _ => return Outcome::Ready(Value::error("ERR a Lock script takes one key")),
    };
    let token = |argv: &[Bytes]| argv.first().cloned().unwrap_or_default();
    let ms = |at: usize| {
        argv.get(at)
            .and_then(|a| super::super::text(a).parse::<i64>().ok())
    };
    let owned = Compare {
        key: key.clone(),
        target: Target::Value(token(argv)),
        op: CompareOp::Equal,
    };
    let expire = |expiry| Command::Expire {
        key: key.clone(),
        expiry,
        when: ExpireWhen::Always,
    };
    let (compare, then) = match script {
        Script::Release => (vec![owned], Command::Delete { key: key.clone() }),
        Script::Reacquire | Script::Extend if ms(1).is_none() => {
            return Outcome::Ready(super::not_an_integer())
        }
        Script::Reacquire => (vec![owned], expire(in_ms(ms(1)))),
        Script::Extend if argv.get(2).is_some_and(|a| &a[..] == b"0") => {
            match lengthened(&key, ms(1).unwrap_or_default(), ctx) {
                Some((seen, at)) => (vec![owned, seen], expire(Expiry::At(at))),
                None => return Outcome::Ready(Value::Int(0)),
            }
        }
        Script::Extend => (vec![owned], expire(in_ms(ms(1)))),
    };
    let txn = Command::Txn {
        compare,
        success: vec![then],
        failure: Vec::new(),
    };
    Outcome::Write(txn, Shape::Succeeded)
}

/// `ms` from now (a negative time is already passed).
fn in_ms(ms: Option<i64>) -> Expiry {
    Expiry::In(ms.unwrap_or_default().max(0) as u64)
}

/// For Extend adding `ms` to the time to live: a compare that `key` is
/// unchanged since its deadline was read, and the deadline lengthened;
/// `None` if it has no deadline (the script answers 0 then).
fn lengthened(key: &Bytes, ms: i64, ctx: &Ctx<'_>) -> Option<(Compare, u64)> {
    // The revision first: a write after it fails the compare.
    let seen = cmd::get::revised(key, ctx.db).ok()??.1.modified;
    let ttl = Command::Ttl {
        key: key.clone(),
        absolute: true,
    };
    let Reply::Int(at) = cmd::read(ttl, ctx.db) else {
        return None;
    };
    let at = u64::try_from(at).ok()?;
    let compare = Compare {
        key: key.clone(),
        target: Target::ModRevision(seen),
        op: CompareOp::Equal,
    };
    Some((compare, at.saturating_add_signed(ms)))
}
