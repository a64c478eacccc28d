//! Server commands: INFO, CONFIG GET and SET, COMMAND (COUNT, DOCS, INFO,
//! LIST).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{is, pubsub, Ctx, Outcome, Spec, COMMANDS};
use crate::cmd;
use crate::commit::LogFigures;
use crate::config::SyncMode;
use crate::resp::codec::Value;
use crate::resp::glob;
use crate::stats::Stats;

/// The Redis version whose commands and replies this door follows, reported
/// where clients look for one (`INFO server`, `HELLO`); kvstore's own version
/// is beside it as `kvstore_version`.
pub const REDIS_VERSION: &str = "7.0.0";

/// The INFO sections, in order.
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "persistence",
    "stats",
    "cluster",
    "keyspace",
];

/// INFO [section ...]: `all`, `default` and `everything` mean every section.
pub(super) fn info(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let all = args.is_empty()
        || args
            .iter()
            .any(|a| is(a, "all") || is(a, "default") || is(a, "everything"));
    let mut out = String::new();
    for section in SECTIONS {
        if all || args.iter().any(|a| is(a, section)) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            write_section(&mut out, section, ctx);
        }
    }
    Outcome::Ready(Value::Verbatim(out))
}

fn write_section(out: &mut String, section: &str, ctx: &Ctx<'_>) {
    let info = &ctx.shared.info;
    let stats = &ctx.db.stats;
    let n = |c: &AtomicU64| Stats::get(c);
    // "server" → "# Server"
    let mut title = section.to_string();
    title[..1].make_ascii_uppercase();
    let _ = write!(out, "# {title}\r\n");
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{name}:{value}\r\n");
    };
    match section {
        "server" => {
            let uptime = stats.started.elapsed().as_secs();
            line("redis_version", &REDIS_VERSION);
            line("kvstore_version", &env!("CARGO_PKG_VERSION"));
            // Cluster clients read this (and `cluster_enabled`) at connect.
            let mode = match ctx.db.cluster() {
                Some(_) => "cluster",
                None => "standalone",
            };
            line("redis_mode", &mode);
            line("os", &std::env::consts::OS);
            line("arch_bits", &(usize::BITS));
            line("process_id", &std::process::id());
            line("tcp_port", &info.resp_addr.port());
            line("kvstore_native_port", &info.native_addr.port());
            line("uptime_in_seconds", &uptime);
            line("uptime_in_days", &(uptime / 86_400));
        }
        "clients" => {
            line("connected_clients", &n(&stats.connections));
            line("maxclients", &info.max_connections);
            line("blocked_clients", &0);
        }
        "persistence" => {
            line("loading", &0);
            line("aof_enabled", &1);
            let log = ctx.db.log();
            let status = if log.failure().is_some() { "err" } else { "ok" };
            line("aof_last_write_status", &status);
            line("kvstore_sync", &sync_name(info.sync));
            // The single-node log's own figures (none in cluster mode).
            if let Some(log) = log.figures() {
                let l = |c: &AtomicU64| LogFigures::get(c);
                line("kvstore_log_records", &l(&log.records));
                line("kvstore_log_fsyncs", &l(&log.syncs));
                line("kvstore_log_segment_bytes", &l(&log.segment_bytes));
                line("kvstore_snapshots", &l(&log.snapshots));
                line("rdb_last_save_time", &l(&log.last_snapshot_unix));
            }
        }
        "stats" => {
            line("total_connections_received", &n(&stats.connections_total));
            line("total_commands_processed", &n(&stats.commands));
            line("rejected_connections", &n(&stats.connections_rejected));
        }
        "cluster" => line("cluster_enabled", &u8::from(ctx.db.cluster().is_some())),
        "keyspace" => {
            let keys = cmd::keys::count(ctx.db);
            let expires = cmd::keys::count_expiring(ctx.db);
            // avg_ttl is an estimate in Redis too; 0 says there is none.
            if keys > 0 {
                line("db0", &format!("keys={keys},expires={expires},avg_ttl=0"));
            }
        }
        _ => unreachable!("INFO asks only for the sections it lists"),
    }
}

fn sync_name(sync: SyncMode) -> &'static str {
    match sync {
        SyncMode::Always => "always",
        SyncMode::Periodic => "periodic",
        SyncMode::Never => "never",
    }
}

/// CONFIG SET notify-keyspace-events CLASSES: the one setting that is not a
/// command-line flag (a node's own, as in Redis).
fn config_set(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let [name, classes] = args else {
        return Outcome::Ready(Value::error(
            "ERR wrong number of arguments for 'config|set' command",
        ));
    };
    if !is(name, "notify-keyspace-events") {
        return Outcome::Ready(Value::error(format!(
            "ERR CONFIG SET '{}' is not supported: only notify-keyspace-events; kvstore's other settings are command-line flags",
            super::clip(name)
        )));
    }
    match pubsub::parse_classes(classes) {
        Some(flags) => {
            ctx.shared.notify.store(flags, Ordering::Relaxed);
            super::ok()
        }
        None => Outcome::Ready(Value::error(
            "ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - Invalid event class character. Use 'Ag$lshzxeKEtmdn'.",
        )),
    }
}

/// CONFIG GET pattern [pattern ...]: the few parameters clients and tools
/// probe, with kvstore's actual settings; CONFIG SET of
/// notify-keyspace-events. The rest is refused: settings are command-line
/// flags.
pub(super) fn config(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let sub = &args[0];
    if is(sub, "set") {
        return config_set(&args[1..], ctx);
    }
    if !is(sub, "get") {
        let message = if ["rewrite", "resetstat"].iter().any(|s| is(sub, s)) {
            format!(
                "ERR CONFIG {} is not supported: kvstore's settings are command-line flags",
                crate::resp::text(sub).to_uppercase()
            )
        } else {
            format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                super::clip(sub)
            )
        };
        return Outcome::Ready(Value::error(message));
    }
    if args.len() < 2 {
        return Outcome::Ready(Value::error(
            "ERR wrong number of arguments for 'config|get' command",
        ));
    }
    let info = &ctx.shared.info;
    let limits = &ctx.db.limits;
    let appendfsync = match info.sync {
        SyncMode::Always => "always",
        SyncMode::Periodic => "everysec",
        SyncMode::Never => "no",
    };
    let dir = info
        .data
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let file = info
        .data
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let notify = pubsub::format_classes(ctx.shared.notify.load(Ordering::Relaxed));
    let params: [(&str, String); 13] = [
        ("appendonly", "yes".into()),
        ("appendfsync", appendfsync.into()),
        ("save", String::new()),
        ("databases", "1".into()),
        ("maxmemory", "0".into()),
        ("maxclients", info.max_connections.to_string()),
        ("timeout", info.idle_timeout_secs.to_string()),
        ("port", info.resp_addr.port().to_string()),
        ("bind", info.resp_addr.ip().to_string()),
        (
            "proto-max-bulk-len",
            limits.max_key.max(limits.max_value).to_string(),
        ),
        ("dir", dir),
        ("dbfilename", file),
        ("notify-keyspace-events", notify),
    ];
    let mut pairs = Vec::new();
    for (name, value) in &params {
        if args[1..]
            .iter()
            .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
        {
            pairs.push((Value::text(name), Value::text(value)));
        }
    }
    Outcome::Ready(Value::Map(pairs))
}

/// COMMAND, COMMAND COUNT, COMMAND LIST, COMMAND INFO name..., COMMAND DOCS
/// [name...]: enough for `redis-cli`'s hints and for clients that look up
/// key positions.
pub(super) fn command(args: &[Bytes]) -> Outcome {
    let named = |names: &[Bytes]| -> Vec<Option<&'static Spec>> {
        names.iter().map(|n| super::spec(n)).collect()
    };
    let value = match args.split_first() {
        None => Value::Array(COMMANDS.iter().map(command_info).collect()),
        Some((sub, [])) if is(sub, "count") => Value::Int(COMMANDS.len() as i64),
        Some((sub, [])) if is(sub, "list") => {
            Value::Array(COMMANDS.iter().map(|s| Value::text(s.name)).collect())
        }
        Some((sub, names)) if is(sub, "info") => Value::Array(
            named(names)
                .into_iter()
                .map(|s| s.map_or(Value::Nil, command_info))
                .collect(),
        ),
        Some((sub, names)) if is(sub, "docs") => {
            let specs: Vec<&Spec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                named(names).into_iter().flatten().collect()
            };
            Value::Map(
                specs
                    .into_iter()
                    .map(|s| (Value::text(s.name), command_docs(s)))
                    .collect(),
            )
        }
        Some((sub, _)) => Value::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            super::clip(sub)
        )),
    };
    Outcome::Ready(value)
}

/// One entry of `COMMAND INFO`, in Redis 7's ten fields.
fn command_info(spec: &Spec) -> Value {
    let (first, last, step) = spec.keys;
    Value::Array(vec![
        Value::text(spec.name),
        Value::Int(i64::from(spec.arity)),
        Value::Array(spec.flags.iter().map(|f| Value::Simple(f)).collect()),
        Value::Int(i64::from(first)),
        Value::Int(i64::from(last)),
        Value::Int(i64::from(step)),
        Value::Array(Vec::new()),
        Value::Array(Vec::new()),
        Value::Array(Vec::new()),
        Value::Array(Vec::new()),
    ])
}

/// One entry of `COMMAND DOCS`.
fn command_docs(spec: &Spec) -> Value {
    Value::Map(vec![
        (Value::text("summary"), Value::text(spec.summary)),
        (Value::text("since"), Value::text(spec.since)),
        (Value::text("group"), Value::text(spec.group)),
    ])
}
