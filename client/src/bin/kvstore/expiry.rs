//! Deadlines from the shell (docs/expiry.md): `set --ttl`, `expire`,
//! `ttl`, `persist`.

use std::time::Duration;

use kvstore_client::{Client, Condition, Error, ExpireWhen, Expiry};

use crate::output::Output;
use crate::Exit;

/// A time to live as the command line spells it: a number with a unit,
/// `ms`, `s`, `m`, `h` or `d` (`90s`, `1500ms`, `2h`); a bare number is
/// seconds, as in Redis's EXPIRE.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a time to live such as 30s, 1500ms or 2h"))?;
    let ms_per = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m, h or d")),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text} is too long a time"))
}

/// `expire --when`: Redis's EXPIRE options, named.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum When {
    /// Always (the default).
    Always,
    /// Only a key without a deadline (NX).
    NoDeadline,
    /// Only a key with one (XX).
    HasDeadline,
    /// Only a later deadline (GT).
    Later,
    /// Only an earlier deadline (LT).
    Earlier,
}

impl From<When> for ExpireWhen {
    fn from(when: When) -> ExpireWhen {
        match when {
            When::Always => ExpireWhen::Always,
            When::NoDeadline => ExpireWhen::NoDeadline,
            When::HasDeadline => ExpireWhen::HasDeadline,
            When::Later => ExpireWhen::Later,
            When::Earlier => ExpireWhen::Earlier,
        }
    }
}

fn millis(ttl: Duration) -> Expiry {
    Expiry::In(ttl.as_millis() as u64)
}

/// `set --ttl`: prints `OK`, or with a condition whether it stored.
pub async fn set(
    client: &Client,
    key: &str,
    value: Vec<u8>,
    condition: Option<Condition>,
    ttl: Duration,
    out: Output,
) -> Result<(), Error> {
    let when = condition.unwrap_or(Condition::Always);
    let stored = client.set_expiring(key, value, when, millis(ttl)).await?;
    match condition {
        Some(_) => out.flag(key, "stored", stored),
        None => out.ok(),
    }
    Ok(())
}

/// `expire KEY TTL`: prints whether the deadline changed.
pub async fn expire(
    client: &Client,
    key: &str,
    ttl: Duration,
    when: When,
    out: Output,
) -> Result<(), Error> {
    let changed = client.expire(key, millis(ttl), when.into()).await?;
    out.flag(key, "changed", changed);
    Ok(())
}

/// `ttl KEY [--at]`: the milliseconds left (with `--at`, the deadline in
/// ms since the epoch), -1 without a deadline; exit 1 for a missing key.
pub async fn ttl(client: &Client, key: &str, at: bool, out: Output) -> Result<Exit, Error> {
    let n = client.ttl(key, at).await?;
    if n == -2 {
        out.missing(key);
        return Ok(Exit::NotFound);
    }
    out.number(key, if at { "at_ms" } else { "ttl_ms" }, n);
    Ok(Exit::Ok)
}

/// `persist KEY`: prints whether it had a deadline.
pub async fn persist(client: &Client, key: &str, out: Output) -> Result<(), Error> {
    let persisted = client.persist(key).await?;
    out.flag(key, "persisted", persisted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_to_live_read_with_their_units() {
        let ms = |text| parse_ttl(text).map(|d| d.as_millis());
        assert_eq!(ms("30"), Ok(30_000));
        assert_eq!(ms("1500ms"), Ok(1_500));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert!(ms("").is_err());
        assert!(ms("5y").unwrap_err().contains("unknown unit"));
        assert!(ms("-5").is_err());
        assert!(ms("99999999999999999d").unwrap_err().contains("too long"));
    }
}
