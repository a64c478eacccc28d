//! `kvstore-server`: parse flags, set up logging, run the library's server.

use clap::Parser;
use kvstore::{server, Config};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
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
            // Tests and scripts read this line to learn the ports: the
            // native address is always the fourth word.
            match listening.resp {
                None => println!("kvstore-server listening on {}", listening.native),
                Some(resp) => println!(
                    "kvstore-server listening on {} and RESP on {resp}",
                    listening.native
                ),
            }
        })
        .await
    })?;
    Ok(())
}
