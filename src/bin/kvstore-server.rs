//! `kvstore-server`: parse flags, set up logging, run the library's server.

use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use kvstore::{server, Config};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    kvstore::logging::init();
    let matches = Config::command().get_matches();
    let mut config = Config::from_arg_matches(&matches)?;
    config.listen_defaulted =
        matches.value_source("listen") == Some(clap::parser::ValueSource::DefaultValue);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            server::shutdown_signal().await;
            tracing::info!("shutdown requested");
            on_signal.cancel();
        });
        server::run(config, shutdown, |listening| {
            // Tests and scripts read the first line to learn the ports: the
            // native address is always the fourth word, and each other door
            // follows as "and DOOR on ADDR". Written at once, and a reader
            // that has gone (a closed pipe) is no reason to stop.
            let mut said = format!("kvstore-server listening on {}", listening.native);
            if let Some(resp) = listening.resp {
                said.push_str(&format!(" and RESP on {resp}"));
            }
            if let Some(grpc) = listening.grpc {
                said.push_str(&format!(" and gRPC on {grpc}"));
            }
            if let Some(raft) = listening.raft {
                said.push_str(&format!(" and raft on {raft}"));
            }
            said.push('\n');
            if let Some(metrics) = listening.metrics {
                said.push_str(&format!(
                    "kvstore-server metrics on http://{metrics}/metrics\n"
                ));
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(said.as_bytes())
                .and_then(|()| stdout.flush());
        })
        .await
    })?;
    Ok(())
}
