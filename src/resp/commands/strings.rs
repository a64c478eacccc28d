//! String commands: GET (in the dispatcher), SET, SETNX, GETSET, GETDEL (in
//! the dispatcher), MSET, MSETNX, MGET, STRLEN, GETRANGE (and SUBSTR),
//! SETRANGE, APPEND, INCR, DECR, INCRBY, DECRBY, INCRBYFLOAT.

use bytes::Bytes;
use kvstore_client::{Command, Condition, Expiry};

use super::expiry::{options, Options};
use super::{native, not_an_integer, refused, Ctx, Outcome, Shape};
use crate::cmd;
use crate::resp::codec::Value;
use crate::storage::change::parse_i64;

/// The most bytes of values one MGET reply may carry: it is built in memory.
pub const MAX_MGET_BYTES: usize = 64 * 1024 * 1024;

/// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms |
/// KEEPTTL]. Without a time or KEEPTTL the key's deadline goes, as in Redis.
pub(super) fn set(args: &[Bytes]) -> Outcome {
    let (key, value) = (args[0].clone(), args[1].clone());
    let Options {
        condition,
        get,
        expiry,
    } = match options(&args[2..], true) {
        Ok(options) => options,
        Err(e) => return Outcome::Ready(e),
    };
    let shape = if get { Shape::Bulk } else { Shape::OkIfStored };
    let command = match expiry {
        Expiry::Never if condition == Condition::Always && !get => {
            return native(Command::Set { key, value }, Shape::Ok)
        }
        Expiry::Never => Command::SetIf {
            key,
            value,
            condition,
            get,
        },
        expiry => Command::SetExpiring {
            key,
            value,
            condition,
            get,
            expiry,
        },
    };
    native(command, shape)
}

/// SETNX key value: `:1` if it stored.
pub(super) fn setnx(args: &[Bytes]) -> Outcome {
    let command = Command::SetIf {
        key: args[0].clone(),
        value: args[1].clone(),
        condition: Condition::Absent,
        get: false,
    };
    native(command, Shape::Int)
}

/// GETSET key value: the old value.
pub(super) fn getset(args: &[Bytes]) -> Outcome {
    let command = Command::SetIf {
        key: args[0].clone(),
        value: args[1].clone(),
        condition: Condition::Always,
        get: true,
    };
    native(command, Shape::Bulk)
}

/// MSET key value [key value ...]: one BulkSet, one log record; and
/// MSETNX (`if_absent`): `:1` if it stored them all (no key existed), `:0`
/// if it stored none.
pub(super) fn mset(args: &[Bytes], if_absent: bool) -> Outcome {
    if !args.len().is_multiple_of(2) {
        let name = if if_absent { "msetnx" } else { "mset" };
        return Outcome::Ready(Value::error(format!(
            "ERR wrong number of arguments for '{name}' command"
        )));
    }
    let items = args
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    match if_absent {
        false => native(Command::BulkSet { items }, Shape::Ok),
        true => native(Command::BulkSetIfAbsent { items }, Shape::Int),
    }
}

/// SETRANGE key offset value: the new length.
pub(super) fn setrange(args: &[Bytes]) -> Outcome {
    let offset = match parse_i64(&args[1]) {
        None => return Outcome::Ready(not_an_integer()),
        Some(n) if n < 0 => return Outcome::Ready(Value::error("ERR offset is out of range")),
        Some(n) => n as u64,
    };
    let command = Command::SetRange {
        key: args[0].clone(),
        offset,
        value: args[2].clone(),
    };
    native(command, Shape::Int)
}

/// INCRBYFLOAT key increment: the new value, as stored.
pub(super) fn incrbyfloat(args: &[Bytes]) -> Outcome {
    let command = Command::IncrByFloat {
        key: args[0].clone(),
        by: args[1].clone(),
    };
    native(command, Shape::Bulk)
}

/// MGET key [key ...]: every value at one instant, as in Redis (the store
/// holds the read locks of the keys' shards together).
pub(super) fn mget(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let found = match cmd::get_many::apply(args, ctx.db) {
        Ok(found) => found,
        Err(reply) => return refused(reply),
    };
    let mut bytes = 0;
    let mut values = Vec::with_capacity(found.len());
    for value in found {
        match value {
            Some(value) => {
                bytes += value.len();
                if bytes > MAX_MGET_BYTES {
                    return Outcome::Ready(Value::error(format!(
                        "ERR MGET reply would pass {MAX_MGET_BYTES} bytes; ask for fewer keys"
                    )));
                }
                values.push(Value::Bulk(value));
            }
            None => values.push(Value::Nil),
        }
    }
    Outcome::Ready(Value::Array(values))
}

/// STRLEN key: the value's length in bytes, 0 if missing.
pub(super) fn strlen(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    match cmd::get::value(&args[0], ctx.db) {
        Ok(value) => Outcome::Ready(Value::Int(value.map_or(0, |v| v.len()) as i64)),
        Err(reply) => refused(reply),
    }
}

/// GETRANGE key start end (and SUBSTR): the bytes from `start` to `end`
/// inclusive, negative offsets counting from the end, clamped to the
/// value as Redis 7 clamps them; "" for a missing key or an empty range.
pub(super) fn getrange(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let (Some(start), Some(end)) = (parse_i64(&args[1]), parse_i64(&args[2])) else {
        return Outcome::Ready(not_an_integer());
    };
    let value = match cmd::get::value(&args[0], ctx.db) {
        Ok(value) => value.unwrap_or_default(),
        Err(reply) => return refused(reply),
    };
    let range = byte_range(value.len(), start, end);
    Outcome::Ready(Value::Bulk(
        range.map_or_else(Bytes::new, |r| value.slice(r)),
    ))
}

/// The bytes GETRANGE `start` `end` takes of a value of `len` bytes, if any.
fn byte_range(len: usize, start: i64, end: i64) -> Option<std::ops::RangeInclusive<usize>> {
    let len = i64::try_from(len).ok()?;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return None;
    }
    let from_end = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (from_end(start), from_end(end).min(len - 1));
    (start <= end).then_some(start as usize..=end as usize)
}

/// APPEND key value: the new length.
pub(super) fn append(args: &[Bytes]) -> Outcome {
    let command = Command::Append {
        key: args[0].clone(),
        value: args[1].clone(),
    };
    native(command, Shape::Int)
}

/// INCR and DECR.
pub(super) fn incr(key: &Bytes, by: i64) -> Outcome {
    let command = Command::Incr {
        key: key.clone(),
        by,
    };
    native(command, Shape::Int)
}

/// INCRBY key n and DECRBY key n.
pub(super) fn incr_by(args: &[Bytes], negate: bool) -> Outcome {
    let Some(by) = parse_i64(&args[1]) else {
        return Outcome::Ready(not_an_integer());
    };
    let by = if negate {
        match by.checked_neg() {
            Some(by) => by,
            None => return Outcome::Ready(Value::error("ERR decrement would overflow")),
        }
    } else {
        by
    };
    incr(&args[0], by)
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    /// Redis 7's GETRANGE on "This is a string" (its documentation's
    /// examples) and the edges of its clamping.
    #[test]
    fn getrange_takes_what_redis_takes() {
        let text = "This is a string";
        let take = |start, end| byte_range(text.len(), start, end).map(|r| &text[r]);
        assert_eq!(take(0, 3), Some("This"));
        assert_eq!(take(-3, -1), Some("ing"));
        assert_eq!(take(0, -1), Some(text));
        assert_eq!(take(10, 100), Some("string"));
        assert_eq!(take(-100, 3), Some("This"));
        assert_eq!(take(5, 3), None);
        assert_eq!(take(-1, -3), None);
        assert_eq!(take(100, 200), None);
        assert_eq!(byte_range(0, 0, -1), None);
    }
}
