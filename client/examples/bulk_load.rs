//! Load many rows quickly: BulkSets of 1,000 rows, several in flight on one
//! shared client.
//!
//! `cargo run --release -p kvstore-client --example bulk_load -- 100000`

use std::time::Instant;

use kvstore_client::Client;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), kvstore_client::Error> {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let client = Client::builder().build()?;
    let started = Instant::now();
    let mut batches = JoinSet::new();
    for start in (0..rows).step_by(1000) {
        if batches.len() >= 8 {
            batches
                .join_next()
                .await
                .expect("a batch")
                .expect("a batch task")?;
        }
        let client = client.clone();
        batches.spawn(async move {
            let items = (start..(start + 1000).min(rows))
                .map(|i| (format!("row:{i:09}"), format!("value of row {i}")));
            client.bulk_set(items).await
        });
    }
    while let Some(done) = batches.join_next().await {
        done.expect("a batch task")?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{rows} rows in {secs:.2} s: {:.0} rows/s",
        rows as f64 / secs
    );
    Ok(())
}
