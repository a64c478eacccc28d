//! `kvstore`: the command-line client.
//!
//! `kvstore [--addr HOST:PORT] set KEY VALUE [--if-absent|--if-present]
//! [--ttl TTL] | get KEY | del KEY... | exists KEY | incr KEY [STEP] |
//! decr KEY [STEP] | append KEY VALUE | getdel KEY | getset KEY VALUE |
//! mset KEY VALUE... | mget KEY... | expire KEY TTL [--when W] |
//! ttl KEY [--at] | persist KEY | flush [--yes] | keys [PREFIX] [--limit N] |
//! scan PREFIX | range START [END] | stat | load FILE | backup FILE |
//! backup --server NAME | cluster ... | completions SHELL`; with no command,
//! an interactive prompt. Exit codes: 0 success, 1 not found (get, getdel,
//! mget, ttl) or a malformed input line (load), 2 usage error, 3 server
//! unreachable, 4 server error (including rows the server refuses during a
//! load, such as a key over its limit).

mod expiry;
mod load;
mod output;
mod repl;
mod strings;
mod txn;
mod watch;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvstore_client::{
    addr::DEFAULT_ADDR, slot::SlotState, BackupSummary, Client, ClusterMember, ClusterRequest,
    ClusterStatus, Error, GroupView, Reads, ScanQuery,
};

use output::Output;

/// Command-line client for kvstore.
#[derive(Debug, Parser)]
#[command(name = "kvstore", version)]
struct Cli {
    /// Server address: HOST:PORT or kvstore://HOST:PORT.
    #[arg(long, env = "KVSTORE_ADDR", default_value = DEFAULT_ADDR, global = true)]
    addr: String,
    /// How results are printed: text (raw values) or json (machine use;
    /// binary values base64-encoded).
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// A file holding the server's auth token (`KVSTORE_AUTH_TOKEN` may hold
    /// the token itself). Never given on the command line, where other users
    /// could see it.
    #[arg(long, env = "KVSTORE_AUTH_TOKEN_FILE", global = true)]
    auth_token_file: Option<std::path::PathBuf>,
    /// Speak TLS (also chosen by a kvstores:// address); needs --tls-ca.
    #[arg(long, global = true)]
    tls: bool,
    /// The certificate authority (PEM) the server's certificate must chain to.
    #[arg(long, env = "KVSTORE_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// Time allowed for each request, in milliseconds.
    #[arg(long, default_value_t = 5000, global = true)]
    timeout_ms: u64,
    /// Cluster mode: which node answers reads. linearizable: the leader,
    /// current; follower: the first address that answers, maybe stale.
    #[arg(long, value_enum, env = "KVSTORE_READS", default_value_t = ReadsArg::Linearizable, global = true)]
    reads: ReadsArg,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// `--reads`: [`Reads`] as the command line spells it. A session (the
/// third mode) spans one process here, so the CLI offers the two others.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReadsArg {
    Linearizable,
    Follower,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Store VALUE under KEY ("-" reads the value from standard input, binary
    /// safe). With --if-absent or --if-present, prints whether it stored.
    Set {
        key: String,
        value: String,
        /// Only if KEY does not exist (Redis's SET NX).
        #[arg(long, conflicts_with = "if_present")]
        if_absent: bool,
        /// Only if KEY exists (Redis's SET XX).
        #[arg(long)]
        if_present: bool,
        /// Gone after this long: 30s, 1500ms, 2h, 1d (a bare number is
        /// seconds). Without it, any deadline KEY had goes.
        #[arg(long, value_parser = expiry::parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Print the value of KEY (raw bytes when piped); exit 1 if it does not exist.
    Get {
        key: String,
        /// First print the key's revisions: `modified N created M`, the log
        /// positions of its last write and of its creation.
        #[arg(long)]
        version: bool,
    },
    /// Delete KEYs in one write; prints whether the key existed, or with
    /// several keys how many did.
    Del {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Add STEP (default 1) to the integer at KEY (0 if missing); prints the
    /// result.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        step: i64,
    },
    /// Subtract STEP (default 1) from the integer at KEY; prints the result.
    Decr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        step: i64,
    },
    /// Append VALUE to the value at KEY; prints the new length.
    Append { key: String, value: String },
    /// Print the value of KEY and delete it; exit 1 if it does not exist.
    #[command(name = "getdel")]
    GetDel { key: String },
    /// Store VALUE under KEY and print the value it replaced (nothing if
    /// none).
    #[command(name = "getset")]
    GetSet { key: String, value: String },
    /// Store KEY VALUE pairs in one atomic write (in a sharded cluster, all
    /// in one slot).
    Mset {
        #[arg(required = true, value_names = ["KEY", "VALUE"])]
        pairs: Vec<String>,
    },
    /// Print the values of KEYs, a line each (an empty line for a missing
    /// key, and then exit 1).
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Give KEY a deadline TTL from now (30s, 1500ms, 2h); prints whether
    /// it changed (false for a missing key).
    Expire {
        key: String,
        #[arg(value_parser = expiry::parse_ttl)]
        ttl: Duration,
        /// Only change it in this case (Redis's NX, XX, GT, LT).
        #[arg(long, value_enum, default_value_t = expiry::When::Always)]
        when: expiry::When,
    },
    /// Print the milliseconds left before KEY expires, -1 if it has no
    /// deadline; exit 1 if it does not exist.
    Ttl {
        key: String,
        /// Print the deadline instead, in ms since the Unix epoch.
        #[arg(long)]
        at: bool,
    },
    /// Remove KEY's deadline; prints whether it had one.
    Persist { key: String },
    /// Run a transaction read from standard input: lines of `if KEY
    /// value|exists|mod|create =|!=|<|> CONSTANT`, `then COMMAND...`, `else
    /// COMMAND...` (set, get, del, incr, exists, append, expire), or the same as a
    /// JSON object of word lists. Prints `succeeded` or `failed`, then each
    /// reply; exit 1 if a test did not hold (docs/transactions.md).
    Txn,
    /// Print every change to the keys starting with PREFIX as it happens,
    /// a line each: `REVISION put KEY VALUE`, `REVISION del KEY`, `REVISION
    /// expired KEY`, `REVISION deadline KEY MS|none`, `REVISION clear`
    /// (docs/watch.md). Goes on across restarts of the server.
    Watch {
        prefix: Option<String>,
        /// Start at this revision (if the server still has it) instead of now.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Remove every key. Asks first on a terminal; elsewhere needs --yes.
    Flush {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell): e.g. `kvstore completions bash >
    /// /etc/bash_completion.d/kvstore`.
    Completions { shell: clap_complete::Shell },
    /// Print whether KEY exists.
    Exists { key: String },
    /// List keys starting with PREFIX, in byte order.
    Keys {
        prefix: Option<String>,
        /// Stop after this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print the pairs whose keys start with PREFIX, in byte order, as
    /// KEY<TAB>VALUE lines (raw bytes), or JSON with --output json.
    Scan {
        prefix: Option<String>,
        #[command(flatten)]
        walk: Walk,
    },
    /// Print the pairs with START <= key < END (no END: to the last key), in
    /// byte order, as `scan` does.
    Range {
        start: String,
        end: Option<String>,
        #[command(flatten)]
        walk: Walk,
    },
    /// Print the server's figures (keys, bytes, commands, errors, log,
    /// fsync latency, snapshots, uptime, version): a table, or a JSON object
    /// with --output json.
    Stat,
    /// Bulk-load key/value rows from a CSV, TSV or JSON Lines file ("-" for
    /// standard input).
    Load(load::LoadArgs),
    /// Back up the whole store as it is at one instant, while writes go on:
    /// into FILE (written to FILE.tmp, synced, then renamed over FILE), or
    /// "-" for standard output; or, with --server NAME, by the server into
    /// its --backup-dir. `kvstore-server --restore FILE` starts from it.
    Backup {
        /// Where to write the backup ("-": standard output).
        #[arg(required_unless_present = "server", conflicts_with = "server")]
        file: Option<std::path::PathBuf>,
        /// Have the server write it into its --backup-dir under NAME
        /// (letters, digits, '.', '_', '-').
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
    },
    /// Load the backup NAME from the server's --backup-dir into its store,
    /// which must be empty, as ordinary writes (in a cluster: through the
    /// leader to every node). To start a server from a local file instead:
    /// `kvstore-server --restore FILE`.
    Restore {
        /// The backup's name in the server's --backup-dir.
        #[arg(long, value_name = "NAME")]
        server: String,
    },
    /// Administer a cluster of servers started with --node-id
    /// (docs/replication.md).
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Bootstrap a new cluster: the node at --addr and its --peers become
    /// the first voters. Once per cluster.
    Init,
    /// Show every node: id, address, role, term, applied index, lag behind
    /// the leader's log, process id (a table, or JSON with --output json).
    Status,
    /// Add a node that receives the log without voting (ask the leader);
    /// returns once it has caught up.
    AddLearner {
        /// Its --node-id.
        id: u64,
        /// Its native address (--listen). Its own id: as `addr` it would
        /// take the place of the global --addr, and the CLI would ask the
        /// learner to add itself.
        #[arg(id = "learner_addr", value_name = "ADDR")]
        addr: String,
        /// Its raft address (--raft-listen).
        #[arg(value_name = "RAFT_ADDR")]
        raft_addr: String,
    },
    /// Make a learner a voter (ask the leader).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a node from the cluster (ask the leader).
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Create a Raft group, serving no slot yet (ask group 1's leader;
    /// docs/sharding.md).
    AddGroup {
        /// Its nodes, by id (default: the three that run the fewest
        /// groups).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u64>,
    },
    /// Set what a group does with slots, as Redis's CLUSTER SETSLOT (an
    /// operator's tool: moving slots uses the same steps).
    SetSlots {
        /// The group.
        #[arg(long)]
        group: u64,
        /// The slots: one (`42`) or a range (`0-5460`).
        #[arg(long, value_parser = parse_slots)]
        slots: (u16, u16),
        /// serving, elsewhere, frozen or importing.
        #[arg(long, value_parser = parse_slot_state)]
        state: SlotState,
    },
    /// Move slots, with their keys, to another group while clients go on
    /// (ask group 1's leader).
    MoveSlots {
        /// The slots: one (`42`) or a range (`0-5460`), all served by one
        /// group.
        #[arg(long, value_parser = parse_slots)]
        slots: (u16, u16),
        /// The group that serves them afterwards.
        #[arg(long)]
        to: u64,
    },
    /// Undo the slot move under way, if its source has not released the
    /// slots yet (ask group 1's leader).
    AbortMove,
    /// Move slots between groups, one range at a time, until each group
    /// holds an even share of the keys, bytes and slots (ask group 1's
    /// leader; docs/sharding.md).
    Rebalance,
    /// Move a group's replica from one node to another that does not run
    /// it (ask group 1's leader; run it again to finish one that stopped
    /// part-way).
    MoveReplica {
        /// The group.
        #[arg(long)]
        group: u64,
        /// The node that leaves it.
        #[arg(long)]
        from: u64,
        /// The node that joins it: a member of the cluster.
        #[arg(long)]
        to: u64,
    },
}

/// `A-B` or `A`: a slot range.
fn parse_slots(text: &str) -> Result<(u16, u16), String> {
    let number = |s: &str| s.trim().parse::<u16>().map_err(|e| format!("{s:?}: {e}"));
    match text.split_once('-') {
        Some((first, last)) => Ok((number(first)?, number(last)?)),
        None => number(text).map(|slot| (slot, slot)),
    }
}

fn parse_slot_state(text: &str) -> Result<SlotState, String> {
    match text {
        "serving" => Ok(SlotState::Serving),
        "elsewhere" => Ok(SlotState::Elsewhere),
        "frozen" => Ok(SlotState::Frozen),
        "importing" => Ok(SlotState::Importing),
        other => Err(format!(
            "{other:?}: one of serving, elsewhere, frozen, importing"
        )),
    }
}

/// How `scan` and `range` walk their pairs.
#[derive(Debug, clap::Args)]
struct Walk {
    /// Stop after this many pairs.
    #[arg(long)]
    limit: Option<usize>,
    /// Largest key first.
    #[arg(long)]
    reverse: bool,
}

/// The process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    /// `get` of a missing key; `load` stopped at a malformed input line.
    NotFound = 1,
    Usage = 2,
    Unreachable = 3,
    Server = 4,
}

impl Exit {
    fn of(error: &Error) -> Exit {
        match error {
            Error::Connect { .. } | Error::ConnectionLost(_) | Error::Timeout { .. } => {
                Exit::Unreachable
            }
            Error::InvalidAddress(_) | Error::Tls(_) => Exit::Usage,
            _ => Exit::Server,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no server.
    if let Some(Cmd::Completions { shell }) = cli.command {
        completions(shell);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvstore: cannot start: {e}");
            return ExitCode::from(Exit::Server as u8);
        }
    };
    let connect = match Connect::from_cli(&cli) {
        Ok(connect) => connect,
        Err(exit) => return ExitCode::from(exit as u8),
    };
    let client = match connect.client(&cli.addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(Exit::of(&e) as u8);
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            Some(Cmd::Cluster { action }) => cluster(&client, &connect, action, cli.output).await,
            Some(command) => run(&client, command, cli.output).await,
            None => repl::interactive(&client, cli.output).await,
        }
    });
    ExitCode::from(exit as u8)
}

/// How to reach a server: everything but its address.
struct Connect {
    /// `kvstore watch` waits out a restart or a failover, however long.
    patient: bool,
    timeout: Duration,
    reads: Reads,
    tls: bool,
    tls_ca: Option<PathBuf>,
    token: Option<Vec<u8>>,
}

impl Connect {
    fn from_cli(cli: &Cli) -> Result<Connect, Exit> {
        let token = match &cli.auth_token_file {
            Some(path) => match std::fs::read(path) {
                Ok(token) => Some(token),
                Err(e) => {
                    eprintln!("kvstore: cannot read {}: {e}", path.display());
                    return Err(Exit::Usage);
                }
            },
            None => std::env::var_os("KVSTORE_AUTH_TOKEN").map(|t| t.into_encoded_bytes()),
        };
        let token = token.map(|mut token| {
            while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                token.pop();
            }
            token
        });
        Ok(Connect {
            patient: matches!(cli.command, Some(Cmd::Watch { .. })),
            timeout: Duration::from_millis(cli.timeout_ms),
            reads: match cli.reads {
                ReadsArg::Linearizable => Reads::Linearizable,
                ReadsArg::Follower => Reads::Follower,
            },
            tls: cli.tls,
            tls_ca: cli.tls_ca.clone(),
            token,
        })
    }

    /// A client of the server at `addr`.
    fn client(&self, addr: &str) -> Result<Client, Error> {
        let mut builder = Client::builder()
            .addr(addr)
            .request_timeout(self.timeout)
            .reads(self.reads)
            .tls(self.tls);
        if let Some(ca) = &self.tls_ca {
            builder = builder.tls_ca_file(ca);
        }
        if let Some(token) = &self.token {
            builder = builder.auth_token(token.clone());
        }
        if self.patient {
            builder = (builder.max_attempts(usize::MAX))
                .backoff(Duration::from_millis(100), Duration::from_secs(5));
        }
        builder.build()
    }
}

/// `kvstore cluster ...`: one cluster command, then the cluster's state as
/// each member reports it.
async fn cluster(client: &Client, connect: &Connect, action: ClusterCmd, out: Output) -> Exit {
    let request = match action {
        ClusterCmd::Init => ClusterRequest::Init,
        ClusterCmd::Status => ClusterRequest::Status,
        ClusterCmd::AddLearner {
            id,
            addr,
            raft_addr,
        } => ClusterRequest::AddLearner {
            id,
            addr,
            raft_addr,
        },
        ClusterCmd::Promote { id } => ClusterRequest::Promote { id },
        ClusterCmd::Remove { id } => ClusterRequest::Remove { id },
        ClusterCmd::AddGroup { nodes } => ClusterRequest::AddGroup { nodes },
        ClusterCmd::SetSlots {
            group,
            slots: (first, last),
            state,
        } => ClusterRequest::SetSlots {
            group,
            first,
            last,
            state,
        },
        ClusterCmd::MoveSlots {
            slots: (first, last),
            to,
        } => ClusterRequest::MoveSlots { first, last, to },
        ClusterCmd::AbortMove => ClusterRequest::AbortMove,
        ClusterCmd::Rebalance => ClusterRequest::Rebalance,
        ClusterCmd::MoveReplica { group, from, to } => {
            ClusterRequest::MoveReplica { group, from, to }
        }
    };
    let status = match client.cluster(request).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return Exit::of(&e);
        }
    };
    // Each member's own view: its role, term, applied index and pid, and
    // its load from its figures.
    let mut rows = Vec::new();
    for member in &status.members {
        let (view, load) = match connect.client(&member.addr) {
            Ok(c) => {
                let view = match member.id == status.node_id {
                    true => Ok(status.clone()),
                    false => c.cluster(ClusterRequest::Status).await,
                };
                let load = match view {
                    Ok(_) => c.stats().await.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                (view, load)
            }
            Err(e) => (Err(e), Vec::new()),
        };
        rows.push((member.clone(), view, load));
    }
    let leader_last = rows
        .iter()
        .filter_map(|(_, own, _)| own.as_ref().ok())
        .find(|s| s.role == "leader")
        .and_then(|s| s.last_log_index);
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|(member, own, figures)| match own {
            Ok(s) => serde_json::json!({
                "id": member.id,
                "addr": member.addr,
                "raft_addr": member.raft_addr,
                "resp_addr": member.resp_addr,
                "voter": member.voter,
                "role": s.role,
                "term": s.term,
                "leader": s.leader,
                "last_log_index": s.last_log_index,
                "applied_index": s.applied_index,
                "lag": leader_last.map(|l| l.saturating_sub(s.applied_index.unwrap_or(0))),
                "connections": figure(figures, "connections"),
                "commands_last_second": figure(figures, "commands_last_second"),
                "pid": s.pid,
            }),
            Err(e) => serde_json::json!({
                "id": member.id,
                "addr": member.addr,
                "raft_addr": member.raft_addr,
                "resp_addr": member.resp_addr,
                "voter": member.voter,
                "role": "unreachable",
                "error": e.to_string(),
            }),
        })
        .collect();
    match out {
        Output::Json => output::print_json(&serde_json::json!({
            "node": status.node_id,
            "leader": status.leader,
            "nodes": json_rows,
            "groups": groups_json(&rows),
            "moving": status.moving.as_ref().map(|m| serde_json::json!({
                "slots": format!("{}-{}", m.first, m.last),
                "from": m.from,
                "to": m.to,
                "step": m.step,
            })),
        })),
        Output::Text => {
            output::say(&format!(
                "{:>4}  {:<21}  {:<21}  {:<21}  {:<11}  {:>5}  {:>9}  {:>6}  {:>5}  {:>7}  {:>8}",
                "id",
                "addr",
                "raft",
                "resp",
                "role",
                "term",
                "applied",
                "lag",
                "conns",
                "req/s",
                "pid"
            ));
            for row in &json_rows {
                let text = |k: &str| match &row[k] {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                output::say(&format!(
                    "{:>4}  {:<21}  {:<21}  {:<21}  {:<11}  {:>5}  {:>9}  {:>6}  {:>5}  {:>7}  {:>8}",
                    text("id"),
                    text("addr"),
                    text("raft_addr"),
                    text("resp_addr"),
                    text("role"),
                    text("term"),
                    text("applied_index"),
                    text("lag"),
                    text("connections"),
                    text("commands_last_second"),
                    text("pid")
                ));
            }
            let groups = groups_json(&rows);
            // A cluster that is not sharded has group 1 alone: nothing to add.
            if groups.len() > 1 {
                print_groups(&groups);
            }
            if let Some(m) = &status.moving {
                output::say(&format!(
                    "\nmoving slots {}-{} from group {} to {}: {} done",
                    m.first, m.last, m.from, m.to, m.step
                ));
            }
        }
    }
    Exit::Ok
}

/// A member, its own view of the cluster, and its figures.
type StatusRow = (
    ClusterMember,
    Result<ClusterStatus, Error>,
    Vec<(String, i64)>,
);

/// Every group any member runs, from the members' own views: its leader
/// (the member that says it leads, else the freshest view's), term,
/// voters and slots.
fn groups_json(rows: &[StatusRow]) -> Vec<serde_json::Value> {
    let mut groups: std::collections::BTreeMap<u64, (GroupView, Option<u64>)> = Default::default();
    let views = rows.iter().filter_map(|(_, own, _)| own.as_ref().ok());
    for status in views {
        for view in &status.groups {
            let leads = view.role == "leader";
            let known = (groups.entry(view.id)).or_insert_with(|| (view.clone(), None));
            if leads || view.term > known.0.term {
                known.0 = view.clone();
            }
            if leads {
                known.1 = Some(status.node_id);
            }
        }
    }
    (groups.values())
        .map(|(g, leading)| {
            serde_json::json!({
                "id": g.id,
                "leader": leading.or(g.leader),
                "term": g.term,
                "voters": g.voters,
                "keys": g.keys,
                "slots": g.slots.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The groups table of `kvstore cluster status`.
fn print_groups(groups: &[serde_json::Value]) {
    output::say("");
    output::say(&format!(
        "{:>5}  {:>6}  {:>5}  {:<12}  {:>10}  slots",
        "group", "leader", "term", "voters", "keys"
    ));
    for g in groups {
        let voters: Vec<String> = (g["voters"].as_array().into_iter().flatten())
            .map(|v| v.to_string())
            .collect();
        let slots: Vec<&str> = (g["slots"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str())
            .collect();
        let number = |v: &serde_json::Value| v.as_u64().map_or("-".into(), |n| n.to_string());
        output::say(&format!(
            "{:>5}  {:>6}  {:>5}  {:<12}  {:>10}  {}",
            number(&g["id"]),
            number(&g["leader"]),
            number(&g["term"]),
            voters.join(","),
            number(&g["keys"]),
            match slots.is_empty() {
                true => "-".to_string(),
                false => slots.join(" "),
            }
        ));
    }
}

/// The figure `name` among a node's `Stats`, if it reported it.
fn figure(figures: &[(String, i64)], name: &str) -> Option<i64> {
    figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Runs one command and prints its result; returns the exit code.
async fn run(client: &Client, command: Cmd, out: Output) -> Exit {
    let result = match command {
        Cmd::Set {
            key,
            value,
            if_absent,
            if_present,
            ttl,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                    eprintln!("kvstore: cannot read the value from standard input: {e}");
                    return Exit::Usage;
                }
                buf
            } else {
                value.into_bytes()
            };
            let condition = strings::condition(if_absent, if_present);
            match (condition, ttl) {
                (condition, Some(ttl)) => {
                    expiry::set(client, &key, value, condition, ttl, out).await
                }
                (Some(condition), None) => {
                    strings::set_if(client, &key, value, condition, out).await
                }
                (None, None) => client.set(&key, value).await.map(|()| out.ok()),
            }
        }
        Cmd::Get { key, version } => {
            return exit_of(strings::get(client, &key, version, out).await)
        }
        Cmd::Del { keys } => strings::delete(client, &keys, out).await,
        Cmd::Incr { key, step } => strings::incr(client, &key, step, out).await,
        Cmd::Decr { key, step } => match step.checked_neg() {
            Some(by) => strings::incr(client, &key, by, out).await,
            None => {
                eprintln!("kvstore: decr by {step} would overflow");
                return Exit::Usage;
            }
        },
        Cmd::Append { key, value } => strings::append(client, &key, &value, out).await,
        Cmd::GetDel { key } => return exit_of(strings::get_del(client, &key, out).await),
        Cmd::GetSet { key, value } => strings::get_set(client, &key, &value, out).await,
        Cmd::Mset { pairs } => return exit_of(strings::mset(client, &pairs, out).await),
        Cmd::Mget { keys } => return exit_of(strings::mget(client, &keys, out).await),
        Cmd::Flush { yes } => return exit_of(strings::flush(client, yes, out).await),
        Cmd::Expire { key, ttl, when } => expiry::expire(client, &key, ttl, when, out).await,
        Cmd::Ttl { key, at } => return exit_of(expiry::ttl(client, &key, at, out).await),
        Cmd::Persist { key } => expiry::persist(client, &key, out).await,
        Cmd::Txn => return txn::run(client, out).await,
        Cmd::Watch {
            prefix,
            from,
            count,
        } => {
            let prefix = prefix.unwrap_or_default();
            return exit_of(watch::run(client, &prefix, from, count, out).await);
        }
        Cmd::Completions { shell } => {
            completions(shell);
            Ok(())
        }
        Cmd::Exists { key } => client
            .exists(&key)
            .await
            .map(|exists| out.flag(&key, "exists", exists)),
        Cmd::Keys { prefix, limit } => {
            list_keys(client, prefix.unwrap_or_default(), limit, out).await
        }
        Cmd::Scan { prefix, walk } => {
            list_pairs(
                client,
                ScanQuery::prefix(prefix.unwrap_or_default()),
                walk,
                out,
            )
            .await
        }
        Cmd::Range { start, end, walk } => {
            list_pairs(client, ScanQuery::range(start, end), walk, out).await
        }
        Cmd::Stat => client
            .stats()
            .await
            .map(|figures| print_stats(&figures, out)),
        Cmd::Load(args) => return load::run(client, &args, out).await,
        Cmd::Backup { file, server } => backup(client, file, server, out).await,
        Cmd::Restore { server } => restore(client, &server, out).await,
        Cmd::Cluster { .. } => unreachable!("main runs cluster commands"),
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("kvstore: {e}");
            Exit::of(&e)
        }
    }
}

/// The exit of a command that chooses its own, or of its error.
fn exit_of(result: Result<Exit, Error>) -> Exit {
    result.unwrap_or_else(|e| {
        eprintln!("kvstore: {e}");
        Exit::of(&e)
    })
}

/// `kvstore completions SHELL`: the script, on standard output.
fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    // Into a buffer first: the generator panics on a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kvstore", &mut script);
    let _ = std::io::stdout().lock().write_all(&script);
}

/// `kvstore backup`: streams the backup into a file (durably) or standard
/// output, or has the server write it; then says what it holds.
async fn backup(
    client: &Client,
    file: Option<PathBuf>,
    server: Option<String>,
    out: Output,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let (summary, place) = match (file, server) {
        (_, Some(name)) => (client.backup_on_server(&name).await?, name),
        (Some(path), None) if path.as_os_str() == "-" => {
            let summary = stream_into(client, &mut std::io::stdout().lock()).await?;
            // The data went to standard output: the summary goes to stderr.
            eprintln!(
                "kvstore: backup: {} keys, {} bytes",
                summary.keys, summary.bytes
            );
            return Ok(());
        }
        (Some(path), None) => (
            backup_to_file(client, &path).await?,
            path.display().to_string(),
        ),
        (None, None) => return Err(Error::Protocol("backup needs FILE or --server NAME".into())),
    };
    let ops = "writes made during the copy";
    say_summary("backup", &place, ops, &summary, started, out);
    Ok(())
}

/// What a backup or a restore (`action`) of `place` held, and how long it
/// took since `started`.
fn say_summary(
    action: &str,
    place: &str,
    ops: &str,
    summary: &BackupSummary,
    started: std::time::Instant,
    out: Output,
) {
    let seconds = started.elapsed().as_secs_f64();
    match out {
        Output::Text => output::say(&format!(
            "{action} {place}: {} keys, {} {ops}, {} bytes, {seconds:.2} s",
            summary.keys, summary.ops, summary.bytes
        )),
        Output::Json => output::print_json(&serde_json::json!({
            action: place,
            "keys": summary.keys,
            "ops": summary.ops,
            "bytes": summary.bytes,
            "seconds": seconds,
        })),
    }
}

/// `kvstore restore --server NAME`: has the server load its backup, then
/// says what it restored.
async fn restore(client: &Client, name: &str, out: Output) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let summary = client.restore_on_server(name).await?;
    let ops = "writes replayed after them";
    say_summary("restore", name, ops, &summary, started, out);
    Ok(())
}

/// Writes the backup to `path` durably: a temp file beside it
/// (`FILE.PID.tmp`), `fsync`,
/// rename over `path`, `fsync` of the directory. An old file at `path` stays
/// whole until the new one replaces it.
async fn backup_to_file(client: &Client, path: &Path) -> Result<BackupSummary, Error> {
    // A temp name of this process's own, created new: two backups to the
    // same FILE never write into one temp file.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = async {
        // Only its owner may read it: a backup holds every key and value.
        let mut options = std::fs::OpenOptions::new();
        options.create_new(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(Error::Output)?;
        let summary = stream_into(client, &mut file).await?;
        file.sync_all().map_err(Error::Output)?;
        std::fs::rename(&tmp, path).map_err(Error::Output)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::Output)?;
        Ok(summary)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The backup's chunks written to `out` as they arrive (plain blocking
/// writes: this tool does nothing else meanwhile).
async fn stream_into(client: &Client, out: &mut impl Write) -> Result<BackupSummary, Error> {
    let mut stream = client.backup_stream().await?;
    while let Some(chunk) = stream.next_chunk().await? {
        out.write_all(&chunk).map_err(Error::Output)?;
    }
    out.flush().map_err(Error::Output)?;
    stream.summary()
}

fn print_stats(figures: &[(String, i64)], out: Output) {
    match out {
        Output::Text => {
            let width = figures.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, value) in figures {
                output::say(&format!("{name:<width$}  {value:>14}"));
            }
        }
        Output::Json => {
            let object: serde_json::Map<String, serde_json::Value> = figures
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::from(*v)))
                .collect();
            output::print_json(&serde_json::Value::Object(object));
        }
    }
}

async fn list_pairs(
    client: &Client,
    query: ScanQuery,
    walk: Walk,
    out: Output,
) -> Result<(), Error> {
    use futures_util::StreamExt;
    let query = if walk.reverse { query.reverse() } else { query };
    let mut pairs = std::pin::pin!(client.scan(query).take(walk.limit.unwrap_or(usize::MAX)));
    let mut all = Vec::new();
    while let Some(pair) = pairs.next().await {
        let (key, value) = pair?;
        match out {
            Output::Text => output::write_pair(&key, &value),
            Output::Json => all.push(serde_json::json!({
                "key": output::json_bytes(&key),
                "value": output::json_bytes(&value),
            })),
        }
    }
    if out == Output::Json {
        output::print_json(&serde_json::json!({ "pairs": all }));
    }
    Ok(())
}

async fn list_keys(
    client: &Client,
    prefix: String,
    limit: Option<usize>,
    out: Output,
) -> Result<(), Error> {
    use futures_util::StreamExt;
    let mut keys = std::pin::pin!(client.keys(prefix).take(limit.unwrap_or(usize::MAX)));
    let mut all = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        match out {
            Output::Text => output::write_line(&key),
            Output::Json => all.push(key),
        }
    }
    if out == Output::Json {
        output::print_json(
            &serde_json::json!({ "keys": all.iter().map(|k| output::json_bytes(k)).collect::<Vec<_>>() }),
        );
    }
    Ok(())
}
