//! `kvstore txn`: a compare-and-swap transaction read from standard input
//! (docs/transactions.md), one clause a line:
//!
//! ```text
//! if config mod = 42        # KEY value|exists|mod|create =|!=|<|> CONSTANT
//! then set config v2        # set K V | get K | del K... | incr K [N] | exists K | append K V | expire K TTL
//! else get config
//! ```
//!
//! or the same as one JSON object of word lists: `{"if": [["config", "mod",
//! "=", "42"]], "then": [["set", "config", "v2"]], "else": [["get",
//! "config"]]}` (for values with spaces). Prints whether the tests held,
//! then each command's reply; exits 1 if a test did not hold.

use kvstore_client::{Client, Command, CompareOp, ExpireWhen, Expiry, Reply, Target, Transaction};
use serde_json::{json, Value};

use crate::output::{self, Output};
use crate::Exit;

/// A transaction's clauses: tests, then commands, else commands.
#[derive(Debug, Default, PartialEq)]
struct Clauses {
    tests: Vec<Vec<String>>,
    then: Vec<Vec<String>>,
    otherwise: Vec<Vec<String>>,
}

/// Reads the clauses of `text`: a JSON object, or lines.
fn clauses(text: &str) -> Result<Clauses, String> {
    if text.trim_start().starts_with('{') {
        let parsed: std::collections::BTreeMap<String, Vec<Vec<String>>> =
            serde_json::from_str(text).map_err(|e| format!("not a transaction in JSON: {e}"))?;
        let mut clauses = Clauses::default();
        for (name, lists) in parsed {
            section(&mut clauses, &name)?.extend(lists);
        }
        return Ok(clauses);
    }
    let mut clauses = Clauses::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace().map(str::to_string);
        let Some(first) = words.next() else { continue };
        let list = section(&mut clauses, &first).map_err(|e| format!("line {}: {e}", n + 1))?;
        list.push(words.collect());
    }
    Ok(clauses)
}

fn section<'c>(clauses: &'c mut Clauses, name: &str) -> Result<&'c mut Vec<Vec<String>>, String> {
    match name {
        "if" => Ok(&mut clauses.tests),
        "then" => Ok(&mut clauses.then),
        "else" => Ok(&mut clauses.otherwise),
        other => Err(format!("{other:?} is not if, then or else")),
    }
}

/// `KEY value|exists|mod|create =|!=|<|> CONSTANT` as a test.
fn test(words: &[String]) -> Result<(String, Target, CompareOp), String> {
    let [key, target, op, constant] = words else {
        return Err(format!(
            "a test is KEY value|exists|mod|create =|!=|<|> CONSTANT, not {words:?}"
        ));
    };
    let number = || {
        constant
            .parse::<u64>()
            .map_err(|_| format!("{constant:?} is not a revision"))
    };
    let target = match target.as_str() {
        "value" => Target::Value(constant.clone().into()),
        "exists" => Target::Exists(
            constant
                .parse()
                .map_err(|_| format!("{constant:?} is not true or false"))?,
        ),
        "mod" => Target::ModRevision(number()?),
        "create" => Target::CreateRevision(number()?),
        other => return Err(format!("{other:?} is not value, exists, mod or create")),
    };
    let op = match op.as_str() {
        "=" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => return Err(format!("{other:?} is not =, !=, < or >")),
    };
    Ok((key.clone(), target, op))
}

/// A command's words as a native command.
fn command(words: &[String]) -> Result<Command, String> {
    let b = |s: &String| bytes::Bytes::copy_from_slice(s.as_bytes());
    Ok(match words {
        [name, key, value] if name == "set" => Command::Set {
            key: b(key),
            value: b(value),
        },
        [name, key, value] if name == "append" => Command::Append {
            key: b(key),
            value: b(value),
        },
        [name, key] if name == "get" => Command::Get { key: b(key) },
        [name, key] if name == "exists" => Command::Exists { key: b(key) },
        [name, key] if name == "incr" => Command::Incr { key: b(key), by: 1 },
        [name, key, by] if name == "incr" => Command::Incr {
            key: b(key),
            by: by
                .parse()
                .map_err(|_| format!("{by:?} is not an integer"))?,
        },
        [name, key, ttl] if name == "expire" => Command::Expire {
            key: b(key),
            expiry: Expiry::In(crate::expiry::parse_ttl(ttl)?.as_millis() as u64),
            when: ExpireWhen::Always,
        },
        [name, keys @ ..] if name == "del" && !keys.is_empty() => Command::DeleteMany {
            keys: keys.iter().map(b).collect(),
        },
        _ => {
            return Err(format!(
                "{words:?} is not set K V, get K, del K..., incr K [N], exists K, append K V or expire K TTL"
            ))
        }
    })
}

/// The transaction `text` describes.
fn transaction(text: &str) -> Result<Transaction, String> {
    let clauses = clauses(text)?;
    let mut txn = Transaction::new();
    for words in &clauses.tests {
        let (key, target, op) = test(words)?;
        txn = txn.when(key, target, op);
    }
    for words in &clauses.then {
        txn = txn.then(command(words)?);
    }
    for words in &clauses.otherwise {
        txn = txn.otherwise(command(words)?);
    }
    Ok(txn)
}

/// A reply as a line of text, and as JSON.
fn shown(reply: &Reply) -> (String, Value) {
    match reply {
        Reply::Ok => ("OK".into(), json!("OK")),
        Reply::Bool(b) => (b.to_string(), json!(b)),
        Reply::Int(n) => (n.to_string(), json!(n)),
        Reply::Value(Some(v)) => (
            String::from_utf8_lossy(v).into_owned(),
            output::json_bytes(v),
        ),
        Reply::Value(None) => ("(none)".into(), Value::Null),
        Reply::Error { message, .. } => (format!("error: {message}"), json!({ "error": message })),
        other => (format!("{other:?}"), json!(format!("{other:?}"))),
    }
}

/// `kvstore txn`: runs the transaction on standard input.
pub async fn run(client: &Client, out: Output) -> Exit {
    let mut text = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
        eprintln!("kvstore: cannot read the transaction from standard input: {e}");
        return Exit::Usage;
    }
    let txn = match transaction(&text) {
        Ok(txn) => txn,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return Exit::Usage;
        }
    };
    let done = match client.txn(txn).await {
        Ok(done) => done,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return Exit::of(&e);
        }
    };
    let replies: Vec<(String, Value)> = done.replies.iter().map(shown).collect();
    match out {
        Output::Text => {
            output::say(if done.succeeded {
                "succeeded"
            } else {
                "failed"
            });
            replies.iter().for_each(|(line, _)| output::say(line));
        }
        Output::Json => output::print_json(&json!({
            "succeeded": done.succeeded,
            "replies": replies.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        })),
    }
    match done.succeeded {
        true => Exit::Ok,
        false => Exit::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_read_the_same() {
        let lines = "if config mod = 42  # as read\nthen set config v2\nelse get config\n";
        let json = r#"{"if": [["config", "mod", "=", "42"]], "then": [["set", "config", "v2"]], "else": [["get", "config"]]}"#;
        assert_eq!(transaction(lines), transaction(json));
        let txn = transaction(lines).unwrap();
        let expected = Transaction::new()
            .when("config", Target::ModRevision(42), CompareOp::Equal)
            .then(Command::Set {
                key: "config".into(),
                value: "v2".into(),
            })
            .otherwise(Command::Get {
                key: "config".into(),
            });
        assert_eq!(txn, expected);
    }

    #[test]
    fn bad_clauses_are_named() {
        for (text, says) in [
            ("when a mod = 1", "not if, then or else"),
            ("if a mod == 1", "not =, !=, < or >"),
            ("if a mod = x", "not a revision"),
            ("then frob a", "is not set K V"),
            ("{\"if\": 3}", "not a transaction in JSON"),
        ] {
            let err = transaction(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
