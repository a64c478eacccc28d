//! `kvstore watch PREFIX`: print every change to the keys under PREFIX as
//! it happens, one line each, going on across restarts (docs/watch.md).

use kvstore_client::{Client, Error, Event, EventKind};
use serde_json::json;

use crate::output::{json_bytes, print_json, say, Output};
use crate::Exit;

/// Watches `prefix` from `from` (0: from now) and prints each change;
/// stops after `count` changes if given.
pub async fn run(
    client: &Client,
    prefix: &str,
    from: u64,
    count: Option<u64>,
    out: Output,
) -> Result<Exit, Error> {
    let mut watch = client.watch(prefix, from).await?;
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        for event in watch.next().await? {
            if count.is_some_and(|count| printed == count) {
                break;
            }
            print(&event, out);
            printed += 1;
        }
    }
    Ok(Exit::Ok)
}

/// One line: `REVISION put KEY VALUE`, `REVISION del KEY`, `REVISION
/// expired KEY`, `REVISION deadline KEY MS|none`, `REVISION clear`, with
/// bytes that are not printable ASCII escaped (`\n`, `\x00`); or a JSON
/// object.
fn print(event: &Event, out: Output) {
    let (kind, value, deadline) = match &event.kind {
        EventKind::Put { value, deadline } => ("put", Some(value), *deadline),
        EventKind::Delete => ("del", None, None),
        EventKind::Expired => ("expired", None, None),
        EventKind::Deadline(deadline) => ("deadline", None, *deadline),
        EventKind::Clear => ("clear", None, None),
    };
    if out == Output::Json {
        let mut line = json!({ "revision": event.revision, "kind": kind });
        if kind != "clear" {
            line["key"] = json_bytes(&event.key);
        }
        if let Some(value) = value {
            line["value"] = json_bytes(value);
        }
        if matches!(event.kind, EventKind::Put { .. } | EventKind::Deadline(_)) {
            line["deadline"] = json!(deadline);
        }
        return print_json(&line);
    }
    let mut line = format!("{} {kind}", event.revision);
    if kind != "clear" {
        line = format!("{line} {}", escaped(&event.key));
    }
    if let Some(value) = value {
        line = format!("{line} {}", escaped(value));
    }
    if let EventKind::Deadline(at) = event.kind {
        line = format!("{line} {}", at.map_or("none".into(), |at| at.to_string()));
    }
    say(&line);
}

fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
