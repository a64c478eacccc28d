//! The interactive prompt: `kvstore` with no command, like redis-cli.
//!
//! Each line is split like a shell would (quotes group words) and parsed as
//! one of the tool's commands. History is kept in `~/.kvstore_history`.

use clap::Parser;
use kvstore_client::Client;
use rustyline::error::ReadlineError;

use crate::output::Output;
use crate::{run, Cmd, Exit};

/// One line of the prompt.
#[derive(Debug, Parser)]
#[command(name = "", no_binary_name = true, disable_version_flag = true)]
struct Line {
    #[command(subcommand)]
    command: Cmd,
}

pub async fn run_line(client: &Client, line: &str, out: Output) -> Option<Exit> {
    let Some(words) = shlex::split(line) else {
        eprintln!("unbalanced quotes");
        return None;
    };
    match words.first().map(String::as_str) {
        None => None,
        Some("quit" | "exit") => Some(Exit::Ok),
        Some(_) => match Line::try_parse_from(words) {
            Ok(Line { command }) => {
                run(client, command, out).await;
                None
            }
            Err(e) => {
                let _ = e.print();
                None
            }
        },
    }
}

pub async fn interactive(client: &Client, out: Output) -> Exit {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kvstore: cannot start the prompt: {e}");
            return Exit::Usage;
        }
    };
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".kvstore_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "kvstore {} connected to {}; type help, or quit",
        env!("CARGO_PKG_VERSION"),
        client.addr()
    );
    let prompt = format!("{}> ", client.addr());
    let exit = loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if let Some(exit) = run_line(client, &line, out).await {
                    break exit;
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break Exit::Ok,
            Err(e) => {
                eprintln!("kvstore: {e}");
                break Exit::Usage;
            }
        }
    };
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    exit
}
