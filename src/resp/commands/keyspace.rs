//! Commands over keys: DEL, UNLINK, EXISTS, TOUCH, KEYS, SCAN, TYPE, OBJECT,
//! FLUSHDB, FLUSHALL (DBSIZE is in the dispatcher; TTL and the other
//! expiry commands are in `expiry`).

use bytes::Bytes;
use kvstore_client::protocol::MAX_KEYS_PAGE;
use kvstore_client::Command;

use super::{is, native, not_an_integer, refused, syntax_error, Ctx, Outcome, Shape};
use crate::cmd;
use crate::resp::codec::Value;
use crate::resp::glob;
use crate::storage::change::parse_i64;

/// COPY source destination [DB 0] [REPLACE]: `:1` if copied. Only
/// database 0 exists.
pub(super) fn copy(args: &[Bytes]) -> Outcome {
    let (from, to) = (args[0].clone(), args[1].clone());
    let mut replace = false;
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        if is(option, "replace") {
            replace = true;
        } else if is(option, "db") {
            match options.next().map(|db| parse_i64(db)) {
                Some(Some(0)) => {}
                Some(Some(_)) => {
                    return Outcome::Ready(Value::error("ERR DB index is out of range"))
                }
                Some(None) => return Outcome::Ready(not_an_integer()),
                None => return Outcome::Ready(syntax_error()),
            }
        } else {
            return Outcome::Ready(syntax_error());
        }
    }
    if from == to {
        return Outcome::Ready(Value::error(
            "ERR source and destination objects are the same",
        ));
    }
    native(Command::Copy { from, to, replace }, Shape::Int)
}

/// RENAME source destination (`replace`): `+OK`; RENAMENX: `:1` renamed,
/// `:0` if the destination exists. The deadline moves with the value.
pub(super) fn rename(args: &[Bytes], replace: bool) -> Outcome {
    let command = Command::Rename {
        from: args[0].clone(),
        to: args[1].clone(),
        replace,
    };
    native(
        command,
        if replace {
            Shape::OkIfStored
        } else {
            Shape::Int
        },
    )
}

/// RANDOMKEY: a key, or nil if there is none. The key space is ordered,
/// not hashed, so it takes the first key after a random 8-byte probe
/// (wrapping to the first key): keys after long gaps come up more often.
pub(super) async fn randomkey(ctx: &Ctx<'_>) -> Outcome {
    // A fresh RandomState is randomly keyed: hashing the time with it is a
    // random number without a dependency.
    let random = std::collections::hash_map::RandomState::new();
    let probe = std::hash::BuildHasher::hash_one(&random, std::time::Instant::now()).to_be_bytes();
    for after in [Some(&probe[..]), None] {
        match cmd::keys::node_page(b"", after, 1, usize::MAX, ctx.db).await {
            Ok(page) => {
                if let Some(key) = page.keys.into_iter().next() {
                    return Outcome::Ready(Value::Bulk(key));
                }
            }
            Err(reply) => return refused(reply),
        }
    }
    Outcome::Ready(Value::Nil)
}

/// DEL key [key ...]: one key is a Delete, several one DeleteMany record.
pub(super) fn del(args: &[Bytes]) -> Outcome {
    let command = match args {
        [key] => Command::Delete { key: key.clone() },
        keys => Command::DeleteMany {
            keys: keys.to_vec(),
        },
    };
    native(command, Shape::Int)
}

/// EXISTS key [key ...]: how many of them exist (a repeated key counts again).
pub(super) fn exists(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    match cmd::exists::count(args, ctx.db) {
        Ok(n) => Outcome::Ready(Value::Int(n as i64)),
        Err(reply) => refused(reply),
    }
}

/// OBJECT ENCODING|FREQ|REFCOUNT|HELP key. ENCODING names the encoding
/// Redis 7 would keep the value in (`int`, `embstr` up to 44 bytes, `raw`);
/// no access frequency is tracked, so FREQ answers Redis's error for a
/// server without an LFU policy.
pub(super) fn object(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let sub = &args[0];
    if is(sub, "help") {
        let lines = [
            "OBJECT <subcommand> [<arg> ...]",
            "ENCODING <key>",
            "FREQ <key>",
            "REFCOUNT <key>",
        ];
        return Outcome::Ready(Value::Array(
            lines
                .iter()
                .map(|l| Value::Bulk(Bytes::from_static(l.as_bytes())))
                .collect(),
        ));
    }
    let name = super::super::text(sub).to_ascii_lowercase();
    let ("encoding" | "freq" | "refcount", [key]) = (name.as_str(), &args[1..]) else {
        return Outcome::Ready(Value::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.",
            super::clip(sub)
        )));
    };
    let value = match cmd::get::value(key, ctx.db) {
        Ok(Some(value)) => value,
        Ok(None) => return Outcome::Ready(Value::Nil),
        Err(reply) => return refused(reply),
    };
    Outcome::Ready(if is(sub, "encoding") {
        Value::Simple(encoding(&value))
    } else if is(sub, "refcount") {
        Value::Int(1)
    } else {
        Value::error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. \
             Please note that when switching between policies at runtime LRU and LFU data \
             will take some time to adjust.",
        )
    })
}

/// The encoding Redis 7 gives a string value.
fn encoding(value: &[u8]) -> &'static str {
    match value.len() {
        0..=20 if parse_i64(value).is_some() => "int",
        0..=44 => "embstr",
        _ => "raw",
    }
}

/// TYPE key: `string` or `none`.
pub(super) fn kind(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    match cmd::exists::count(&args[..1], ctx.db) {
        Ok(1) => Outcome::Ready(Value::Simple("string")),
        Ok(_) => Outcome::Ready(Value::Simple("none")),
        Err(reply) => refused(reply),
    }
}

/// FLUSHDB / FLUSHALL [ASYNC | SYNC]: one Clear record, durable before the
/// reply either way.
pub(super) fn flush(args: &[Bytes]) -> Outcome {
    match args {
        [] => {}
        [mode] if is(mode, "async") || is(mode, "sync") => {}
        _ => return Outcome::Ready(syntax_error()),
    }
    native(Command::Flush, Shape::Ok)
}

/// KEYS pattern: every matching key, as long as the reply stays within the
/// reply limit (half the frame limit); past it, an error that says to use
/// SCAN. Only keys that start with the pattern's literal prefix are visited.
pub(super) async fn keys(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let pattern = &args[0];
    let prefix = glob::literal_prefix(pattern);
    let max_bytes = ctx.db.limits.max_reply_bytes;
    let mut found = Vec::new();
    let mut bytes = 0;
    let mut after: Option<Bytes> = None;
    loop {
        let page = match cmd::keys::node_page(
            prefix,
            after.as_deref(),
            MAX_KEYS_PAGE as usize,
            usize::MAX,
            ctx.db,
        )
        .await
        {
            Ok(page) => page,
            Err(reply) => return refused(reply),
        };
        for key in &page.keys {
            if glob::matches(pattern, key) {
                bytes += key.len() + 16;
                if bytes > max_bytes {
                    return Outcome::Ready(Value::error(format!(
                        "ERR KEYS reply would pass the limit of {max_bytes} bytes; use SCAN"
                    )));
                }
                found.push(Value::Bulk(key.clone()));
            }
        }
        if !page.more {
            break;
        }
        after = page.keys.last().cloned();
        // A long walk lets the other connections on this worker run.
        tokio::task::yield_now().await;
    }
    Outcome::Ready(Value::Array(found))
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]: the next keys in
/// key order. COUNT (default 10, at most 10,000) is how many keys are
/// visited; MATCH filters those, so a page may be short or empty while the
/// cursor is not 0. See `crate::resp::cursor` for what is guaranteed.
pub(super) async fn scan(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let Some(cursor) = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Outcome::Ready(Value::error("ERR invalid cursor"));
    };
    let mut pattern: Option<&Bytes> = None;
    let mut count = 10usize;
    let mut strings = true;
    let mut options = &args[1..];
    while let [option, value, rest @ ..] = options {
        if is(option, "match") {
            pattern = Some(value);
        } else if is(option, "count") {
            match parse_i64(value) {
                Some(n) if n >= 1 => count = (n as usize).min(MAX_KEYS_PAGE as usize),
                Some(_) => return Outcome::Ready(syntax_error()),
                None => return Outcome::Ready(not_an_integer()),
            }
        } else if is(option, "type") {
            strings = is(value, "string");
        } else {
            return Outcome::Ready(syntax_error());
        }
        options = rest;
    }
    if !options.is_empty() {
        return Outcome::Ready(syntax_error());
    }
    let after = match cursor {
        0 => None,
        id => match ctx.shared.cursors.resume(id) {
            Some(key) => Some(key),
            None => return Outcome::Ready(Value::error("ERR invalid cursor")),
        },
    };
    let prefix = pattern.map_or(&b""[..], |p| glob::literal_prefix(p));
    let page = match cmd::keys::node_page(
        prefix,
        after.as_deref(),
        count,
        ctx.db.limits.max_reply_bytes,
        ctx.db,
    )
    .await
    {
        Ok(page) => page,
        Err(reply) => return refused(reply),
    };
    let next = match (page.more, page.keys.last()) {
        (true, Some(last)) => ctx.shared.cursors.save(last.clone()),
        _ => 0,
    };
    let keys = page
        .keys
        .into_iter()
        .filter(|key| strings && pattern.is_none_or(|p| glob::matches(p, key)))
        .map(Value::Bulk)
        .collect();
    Outcome::Ready(Value::Array(vec![
        Value::text(&next.to_string()),
        Value::Array(keys),
    ]))
}
