//! How results are printed: raw text for people and pipes, JSON for programs.

use std::io::{IsTerminal, Write};

use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    pub fn ok(self) {
        match self {
            Output::Text => say("OK"),
            Output::Json => print_json(&json!({ "ok": true })),
        }
    }

    /// A value: raw bytes when piped; followed by a newline on a terminal.
    pub fn value(self, key: &str, value: &[u8]) {
        match self {
            Output::Text => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(value);
                if stdout.is_terminal() {
                    let _ = stdout.write_all(b"\n");
                }
                let _ = stdout.flush();
            }
            Output::Json => print_json(&json!({ "key": key, "value": json_bytes(value) })),
        }
    }

    /// A value with its revisions: a line `modified N created M`, then the
    /// value as [`Output::value`] prints it.
    pub fn versioned(self, key: &str, found: &kvstore_client::Versioned) {
        let (modified, created) = (found.modified, found.created);
        match self {
            Output::Text => {
                say(&format!("modified {modified} created {created}"));
                self.value(key, &found.value);
            }
            Output::Json => print_json(&json!({
                "key": key,
                "value": json_bytes(&found.value),
                "modified": modified,
                "created": created,
            })),
        }
    }

    /// A missing key: nothing on stdout in text mode, a message on stderr.
    pub fn missing(self, key: &str) {
        eprintln!("kvstore: key {key:?} not found");
        if self == Output::Json {
            print_json(&json!({ "key": key, "value": null }));
        }
    }

    /// A number about a key: a counter's value, a length.
    pub fn number(self, key: &str, name: &str, n: i64) {
        match self {
            Output::Text => say(&n.to_string()),
            Output::Json => print_json(&json!({ "key": key, name: n })),
        }
    }

    /// A number about several keys: how many were deleted.
    pub fn count(self, name: &str, n: i64) {
        match self {
            Output::Text => say(&n.to_string()),
            Output::Json => print_json(&json!({ name: n })),
        }
    }

    pub fn flag(self, key: &str, name: &str, value: bool) {
        match self {
            Output::Text => say(&value.to_string()),
            Output::Json => print_json(&json!({ "key": key, name: value })),
        }
    }
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "..."}`.
pub fn json_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

pub fn print_json(value: &Value) {
    say(&value.to_string());
}

/// A line on stdout. A closed pipe (`kvstore keys | head`) is not an error
/// worth a panic: the output is simply no longer wanted.
pub fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.write_all(b"\n");
}

/// KEY, a tab, VALUE and a newline, as raw bytes (for pair listings).
pub fn write_pair(key: &[u8], value: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(key);
    let _ = stdout.write_all(b"\t");
    let _ = stdout.write_all(value);
    let _ = stdout.write_all(b"\n");
}

/// Raw bytes and a newline (for key listings).
pub fn write_line(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.write_all(b"\n");
}
