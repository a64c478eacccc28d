//! `kvstore-crashtest`: kill the server with SIGKILL at random moments and
//! check that every acknowledged write survives. The harness is in
//! `harness.rs`; docs/durability.md shows how to run it and its results.

mod harness;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = harness::Args::parse();
    match harness::run(&args) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvstore-crashtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
