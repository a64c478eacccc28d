//! Expiry commands (docs/expiry.md): EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT,
//! TTL, PTTL, EXPIRETIME, PEXPIRETIME, PERSIST, SETEX, PSETEX, GETEX, and
//! the options SET and GETEX share, read as Redis 7 reads them.

use bytes::Bytes;
use kvstore_client::{Command, Condition, ExpireWhen, Expiry, Reply};

use super::{is, native, not_an_integer, syntax_error, Ctx, Outcome, Shape};
use crate::cmd;
use crate::resp::codec::Value;
use crate::storage::change::parse_i64;
use crate::storage::clock::system_ms;

/// A time's unit and whether it counts from now or from the epoch: SET's
/// and GETEX's EX, PX, EXAT, PXAT, and the four EXPIRE commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Time {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl Time {
    /// The option `word` names, any case.
    fn named(word: &[u8]) -> Option<Time> {
        let times = [
            ("ex", Time::Ex),
            ("px", Time::Px),
            ("exat", Time::ExAt),
            ("pxat", Time::PxAt),
        ];
        times.into_iter().find(|(w, _)| is(word, w)).map(|(_, t)| t)
    }

    fn in_seconds(self) -> bool {
        matches!(self, Time::Ex | Time::ExAt)
    }

    fn absolute(self) -> bool {
        matches!(self, Time::ExAt | Time::PxAt)
    }

    /// `n` of this time as an [`Expiry`]; a time past what milliseconds
    /// since the epoch hold in an i64 is Redis's "invalid expire time".
    fn expiry(self, n: i64, command: &str) -> Result<Expiry, Value> {
        let ms = match self.in_seconds() {
            true => n.checked_mul(1000).ok_or_else(|| invalid(command))?,
            false => n,
        };
        if self.absolute() {
            return Ok(Expiry::At(ms.max(0) as u64));
        }
        if ms > i64::MAX - system_ms() as i64 {
            return Err(invalid(command));
        }
        // A time already passed: the key goes (EXPIRE with a negative time).
        Ok(u64::try_from(ms).map_or(Expiry::At(0), Expiry::In))
    }
}

fn invalid(command: &str) -> Value {
    Value::error(format!("ERR invalid expire time in '{command}' command"))
}

/// `arg` as a time SET, SETEX, PSETEX or GETEX takes: a positive integer.
fn positive(time: Time, arg: &[u8], command: &str) -> Result<Expiry, Value> {
    match parse_i64(arg) {
        None => Err(not_an_integer()),
        Some(n) if n <= 0 => Err(invalid(command)),
        Some(n) => time.expiry(n, command),
    }
}

/// SET's options (with `set`) or GETEX's, as Redis 7 parses them: each
/// may repeat, and options that contradict each other are a syntax error.
#[derive(Debug)]
pub(super) struct Options {
    pub condition: Condition,
    pub get: bool,
    /// The deadline from the options: `Keep` for KEEPTTL (or GETEX without
    /// one), `Never` for PERSIST (or SET without one).
    pub expiry: Expiry,
}

pub(super) fn options(args: &[Bytes], set: bool) -> Result<Options, Value> {
    let command = if set { "set" } else { "getex" };
    let (mut condition, mut get) = (Condition::Always, false);
    let (mut keep, mut persist, mut time) = (false, false, None::<(Time, &Bytes)>);
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let untimed = time.is_none();
        if set && is(word, "nx") && condition != Condition::Present {
            condition = Condition::Absent;
        } else if set && is(word, "xx") && condition != Condition::Absent {
            condition = Condition::Present;
        } else if set && is(word, "get") {
            get = true;
        } else if set && is(word, "keepttl") && untimed {
            keep = true;
        } else if !set && is(word, "persist") && untimed {
            persist = true;
        } else if let Some(t) =
            Time::named(word).filter(|t| !keep && !persist && time.is_none_or(|(u, _)| u == *t))
        {
            let n = words.next().ok_or_else(syntax_error)?;
            time = Some((t, n));
        } else {
            return Err(syntax_error());
        }
    }
    let expiry = match (time, keep || (!set && !persist)) {
        (Some((t, n)), _) => positive(t, n, command)?,
        (None, true) => Expiry::Keep,
        (None, false) => Expiry::Never,
    };
    Ok(Options {
        condition,
        get,
        expiry,
    })
}

/// SETEX key seconds value and PSETEX key milliseconds value.
pub(super) fn setex(args: &[Bytes], time: Time, command: &str) -> Outcome {
    let expiry = match positive(time, &args[1], command) {
        Ok(expiry) => expiry,
        Err(e) => return Outcome::Ready(e),
    };
    let command = Command::SetExpiring {
        key: args[0].clone(),
        value: args[2].clone(),
        condition: Condition::Always,
        get: false,
        expiry,
    };
    native(command, Shape::OkIfStored)
}

/// GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST].
pub(super) fn getex(args: &[Bytes]) -> Outcome {
    match options(&args[1..], false) {
        Ok(options) => native(
            Command::GetEx {
                key: args[0].clone(),
                expiry: options.expiry,
            },
            Shape::Bulk,
        ),
        Err(e) => Outcome::Ready(e),
    }
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX | XX | GT | LT]:
/// `:1` if the deadline changed (or the key went, its time passed).
pub(super) fn expire(args: &[Bytes], time: Time, command: &str) -> Outcome {
    let when = match expire_when(&args[2..]) {
        Ok(when) => when,
        Err(e) => return Outcome::Ready(e),
    };
    let Some(n) = parse_i64(&args[1]) else {
        return Outcome::Ready(not_an_integer());
    };
    match time.expiry(n, command) {
        Ok(expiry) => native(
            Command::Expire {
                key: args[0].clone(),
                expiry,
                when,
            },
            Shape::Int,
        ),
        Err(e) => Outcome::Ready(e),
    }
}

/// EXPIRE's options, with Redis 7's errors for those that cannot go
/// together.
fn expire_when(args: &[Bytes]) -> Result<ExpireWhen, Value> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for word in args {
        let flag = match () {
            _ if is(word, "nx") => &mut nx,
            _ if is(word, "xx") => &mut xx,
            _ if is(word, "gt") => &mut gt,
            _ if is(word, "lt") => &mut lt,
            _ => {
                let word = crate::resp::text(word);
                return Err(Value::error(format!("ERR Unsupported option {word}")));
            }
        };
        *flag = true;
    }
    if nx && (xx || gt || lt) {
        return Err(Value::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Value::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    // GT never holds for a key without a deadline, so XX adds nothing to it.
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireWhen::NoDeadline,
        (_, _, true, _) => ExpireWhen::Later,
        (_, true, _, true) => ExpireWhen::EarlierDeadline,
        (_, _, _, true) => ExpireWhen::Earlier,
        (_, true, ..) => ExpireWhen::HasDeadline,
        _ => ExpireWhen::Always,
    })
}

/// TTL, PTTL (`absolute` false) and EXPIRETIME, PEXPIRETIME (true); -1 for
/// a key without a deadline, -2 for a missing key. TTL rounds to the
/// nearest second, EXPIRETIME down, as Redis does.
pub(super) fn ttl(args: &[Bytes], absolute: bool, seconds: bool, ctx: &Ctx<'_>) -> Outcome {
    let key = args[0].clone();
    let reply = cmd::read(Command::Ttl { key, absolute }, ctx.db);
    let n = match reply {
        Reply::Int(n) => n,
        other => return Outcome::Ready(Shape::Int.reply(other)),
    };
    Outcome::Ready(Value::Int(match (n, seconds, absolute) {
        (..0, ..) | (_, false, _) => n,
        (_, true, false) => (n + 500) / 1000,
        (_, true, true) => n / 1000,
    }))
}

/// PERSIST key: `:1` if the key had a deadline.
pub(super) fn persist(args: &[Bytes]) -> Outcome {
    let key = args[0].clone();
    native(Command::Persist { key }, Shape::Int)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Bytes> {
        line.split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    fn error(value: Value) -> String {
        match value {
            Value::Error(text) => text,
            other => panic!("not an error: {other:?}"),
        }
    }

    /// SET's options as redis-server 7.0.15 answered them (by hand with
    /// redis-cli).
    #[test]
    fn set_options_read_as_redis_reads_them() {
        let set = |line: &str| options(&words(line), true);
        let expiry = |line: &str| set(line).unwrap().expiry;
        assert_eq!(expiry("EX 10"), Expiry::In(10_000));
        assert_eq!(expiry("px 10 px 20"), Expiry::In(20));
        assert_eq!(expiry("EXAT 7"), Expiry::At(7_000));
        assert_eq!(expiry("KEEPTTL"), Expiry::Keep);
        assert_eq!(expiry("NX GET"), Expiry::Never);
        let nx = set("nx nx get").unwrap();
        assert_eq!((nx.condition, nx.get), (Condition::Absent, true));
        for line in ["EX 10 PX 100", "KEEPTTL EX 10", "EX", "NX XX", "PERSIST"] {
            assert_eq!(error(set(line).unwrap_err()), "ERR syntax error", "{line}");
        }
        let invalid = "ERR invalid expire time in 'set' command";
        for line in ["EX 0", "PX -1", "EX 9223372036854775807", "EX 0 GET"] {
            assert_eq!(error(set(line).unwrap_err()), invalid, "{line}");
        }
        let not_int = "ERR value is not an integer or out of range";
        assert_eq!(error(set("PX 1.5").unwrap_err()), not_int);
        assert_eq!(error(set("EX abc NX XX").unwrap_err()), "ERR syntax error");
    }

    #[test]
    fn getex_options_read_as_redis_reads_them() {
        let getex = |line: &str| options(&words(line), false);
        assert_eq!(getex("").unwrap().expiry, Expiry::Keep);
        assert_eq!(getex("PERSIST").unwrap().expiry, Expiry::Never);
        assert_eq!(getex("ex 10 ex 20").unwrap().expiry, Expiry::In(20_000));
        for line in ["EX 10 PERSIST", "EX 10 PX 10", "FOO", "KEEPTTL", "NX"] {
            assert_eq!(error(getex(line).unwrap_err()), "ERR syntax error");
        }
        let invalid = "ERR invalid expire time in 'getex' command";
        assert_eq!(error(getex("EX 0").unwrap_err()), invalid);
    }

    #[test]
    fn expire_options_read_as_redis_reads_them() {
        let when = |line: &str| expire_when(&words(line));
        assert_eq!(when("").unwrap(), ExpireWhen::Always);
        assert_eq!(when("nx").unwrap(), ExpireWhen::NoDeadline);
        assert_eq!(when("XX").unwrap(), ExpireWhen::HasDeadline);
        assert_eq!(when("gt xx").unwrap(), ExpireWhen::Later);
        assert_eq!(when("LT").unwrap(), ExpireWhen::Earlier);
        assert_eq!(when("xx lt").unwrap(), ExpireWhen::EarlierDeadline);
        let nx = "ERR NX and XX, GT or LT options at the same time are not compatible";
        assert_eq!(error(when("NX XX").unwrap_err()), nx);
        let gt = "ERR GT and LT options at the same time are not compatible";
        assert_eq!(error(when("GT LT").unwrap_err()), gt);
        assert_eq!(
            error(when("FOO").unwrap_err()),
            "ERR Unsupported option FOO"
        );
    }

    #[test]
    fn times_that_overflow_are_invalid_and_past_ones_are_at_zero() {
        let invalid = |r: Result<Expiry, Value>| error(r.unwrap_err());
        let expire = "ERR invalid expire time in 'expire' command";
        assert_eq!(invalid(Time::Ex.expiry(i64::MAX, "expire")), expire);
        assert_eq!(invalid(Time::Ex.expiry(i64::MIN, "expire")), expire);
        assert_eq!(invalid(Time::Px.expiry(i64::MAX, "expire")), expire);
        assert_eq!(
            Time::PxAt.expiry(i64::MAX, "x").unwrap(),
            Expiry::At(i64::MAX as u64)
        );
        assert_eq!(Time::Px.expiry(i64::MIN, "x").unwrap(), Expiry::At(0));
        assert_eq!(Time::ExAt.expiry(-5, "x").unwrap(), Expiry::At(0));
    }
}
