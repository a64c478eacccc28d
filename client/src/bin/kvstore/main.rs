//! `kvstore`: the command-line client.
//!
//! `kvstore [--addr HOST:PORT] set KEY VALUE | get KEY | del KEY | exists KEY |
//! keys [PREFIX] [--limit N] | load FILE`; with no command, an interactive
//! prompt. Exit codes: 0 success, 1 not found (get) or a malformed input line
//! (load), 2 usage error, 3 server unreachable, 4 server error (including rows
//! the server refuses during a load, such as a key over its limit).

mod load;
mod output;
mod repl;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvstore_client::{addr::DEFAULT_ADDR, Client, Error, ScanQuery};

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
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Store VALUE under KEY ("-" reads the value from standard input, binary safe).
    Set { key: String, value: String },
    /// Print the value of KEY (raw bytes when piped); exit 1 if it does not exist.
    Get { key: String },
    /// Delete KEY; prints whether it existed.
    Del { key: String },
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
    let mut builder = Client::builder()
        .addr(&cli.addr)
        .request_timeout(Duration::from_millis(cli.timeout_ms))
        .tls(cli.tls);
    if let Some(ca) = &cli.tls_ca {
        builder = builder.tls_ca_file(ca);
    }
    let token = match &cli.auth_token_file {
        Some(path) => match std::fs::read(path) {
            Ok(token) => Some(token),
            Err(e) => {
                eprintln!("kvstore: cannot read {}: {e}", path.display());
                return ExitCode::from(Exit::Usage as u8);
            }
        },
        None => std::env::var_os("KVSTORE_AUTH_TOKEN").map(|t| t.into_encoded_bytes()),
    };
    if let Some(mut token) = token {
        while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            token.pop();
        }
        builder = builder.auth_token(token);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvstore: {e}");
            return ExitCode::from(Exit::of(&e) as u8);
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            Some(command) => run(&client, command, cli.output).await,
            None => repl::interactive(&client, cli.output).await,
        }
    });
    ExitCode::from(exit as u8)
}

/// Runs one command and prints its result; returns the exit code.
async fn run(client: &Client, command: Cmd, out: Output) -> Exit {
    let result = match command {
        Cmd::Set { key, value } => {
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
            client.set(&key, value).await.map(|()| out.ok())
        }
        Cmd::Get { key } => match client.get(&key).await {
            Ok(Some(value)) => {
                out.value(&key, &value);
                Ok(())
            }
            Ok(None) => {
                out.missing(&key);
                return Exit::NotFound;
            }
            Err(e) => Err(e),
        },
        Cmd::Del { key } => client
            .delete(&key)
            .await
            .map(|existed| out.flag(&key, "deleted", existed)),
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
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("kvstore: {e}");
            Exit::of(&e)
        }
    }
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
