//! The string commands beyond get/set/del: conditional sets, counters,
//! append, get-and-change, several keys at once, and flush.

use std::io::{BufRead, IsTerminal, Write};

use kvstore_client::{Client, Condition, Error};

use crate::output::{self, Output};
use crate::Exit;

/// What `set` does when the key exists or not.
pub fn condition(if_absent: bool, if_present: bool) -> Option<Condition> {
    match (if_absent, if_present) {
        (true, _) => Some(Condition::Absent),
        (_, true) => Some(Condition::Present),
        _ => None,
    }
}

/// `set --if-absent|--if-present`: prints whether it stored.
pub async fn set_if(
    client: &Client,
    key: &str,
    value: Vec<u8>,
    condition: Condition,
    out: Output,
) -> Result<(), Error> {
    let stored = client.set_if(key, value, condition).await?;
    out.flag(key, "stored", stored);
    Ok(())
}

/// `del KEY...`: one key says whether it existed, several how many did.
pub async fn delete(client: &Client, keys: &[String], out: Output) -> Result<(), Error> {
    if let [key] = keys {
        let existed = client.delete(key).await?;
        out.flag(key, "deleted", existed);
        return Ok(());
    }
    let n = client.delete_many(keys).await?;
    out.count("deleted", n as i64);
    Ok(())
}

/// `incr`/`decr`: prints the new value.
pub async fn incr(client: &Client, key: &str, by: i64, out: Output) -> Result<(), Error> {
    let n = client.incr(key, by).await?;
    out.number(key, "value", n);
    Ok(())
}

/// `append`: prints the new length.
pub async fn append(client: &Client, key: &str, value: &str, out: Output) -> Result<(), Error> {
    let n = client.append(key, value).await?;
    out.number(key, "length", n as i64);
    Ok(())
}

/// `getdel`: the value, or exit 1 if there was none.
/// `get`: prints the value, with its revisions first if `version`.
pub async fn get(client: &Client, key: &str, version: bool, out: Output) -> Result<Exit, Error> {
    let printed = match version {
        true => (client.get_with_version(key).await?).map(|found| out.versioned(key, &found)),
        false => client.get(key).await?.map(|value| out.value(key, &value)),
    };
    Ok(match printed {
        Some(()) => Exit::Ok,
        None => {
            out.missing(key);
            Exit::NotFound
        }
    })
}

pub async fn get_del(client: &Client, key: &str, out: Output) -> Result<Exit, Error> {
    Ok(match client.get_del(key).await? {
        Some(value) => {
            out.value(key, &value);
            Exit::Ok
        }
        None => {
            out.missing(key);
            Exit::NotFound
        }
    })
}

/// `getset`: stores, and prints the value replaced (nothing if none: a
/// missing old value is not an error here, the write happened).
pub async fn get_set(client: &Client, key: &str, value: &str, out: Output) -> Result<(), Error> {
    match client.get_set(key, value).await? {
        Some(old) => out.value(key, &old),
        None if out == Output::Json => {
            output::print_json(&serde_json::json!({ "key": key, "value": null }))
        }
        None => {}
    }
    Ok(())
}

/// `mset KEY VALUE ...`: one atomic write (one slot of a sharded cluster).
pub async fn mset(client: &Client, words: &[String], out: Output) -> Result<Exit, Error> {
    if words.len() % 2 == 1 {
        eprintln!(
            "kvstore: mset takes KEY VALUE pairs; {} is alone",
            words[words.len() - 1]
        );
        return Ok(Exit::Usage);
    }
    let pairs = words.chunks(2).map(|pair| (&pair[0], &pair[1]));
    client.bulk_set(pairs).await?;
    out.ok();
    Ok(Exit::Ok)
}

/// `mget KEY...`: a line per key (an empty one for a missing key, which
/// also makes the exit 1), or one JSON object per key. Each key is read
/// on its own, not at one instant.
pub async fn mget(client: &Client, keys: &[String], out: Output) -> Result<Exit, Error> {
    let mut exit = Exit::Ok;
    for key in keys {
        match client.get(key).await? {
            Some(value) if out == Output::Text => output::write_line(&value),
            Some(value) => out.value(key, &value),
            None => {
                out.missing(key);
                if out == Output::Text {
                    output::say("");
                }
                exit = Exit::NotFound;
            }
        }
    }
    Ok(exit)
}

/// `flush`: removes every key, after a yes on a terminal; elsewhere only
/// with `--yes`.
pub async fn flush(client: &Client, yes: bool, out: Output) -> Result<Exit, Error> {
    if !yes && !confirmed(&client.addr()) {
        return Ok(Exit::Usage);
    }
    client.flush().await?;
    out.ok();
    Ok(Exit::Ok)
}

/// Asks on the terminal whether to remove every key; off a terminal, says
/// that `--yes` is needed.
fn confirmed(addr: &str) -> bool {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!("kvstore: flush removes every key; add --yes to do it without a terminal");
        return false;
    }
    eprint!("Remove every key from {addr}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
