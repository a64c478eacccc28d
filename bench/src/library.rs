//! The client library's load (`--library`): one `kvstore_client::Client`
//! given `--addr` (a cluster's nodes, comma-separated), shared by the `-c`
//! tasks, each sending batches of `-P` concurrent calls through it. So it
//! measures what an application gets: the library's connections (two per
//! server), its exactly-once sessions, and in a sharded cluster its routes,
//! which send each key to its group's leader. A call's latency runs from
//! the start of its batch to its answer.

use kvstore_client::Client;

use crate::load::{concurrent_batches, Shared, Tally};
use crate::{Args, Test};

/// The shared client.
pub fn connect(addr: &str) -> anyhow::Result<Client> {
    Ok(Client::builder().addr(addr).build()?)
}

/// One task's loop.
pub(crate) async fn connection(
    client: Client,
    seed: u64,
    args: &Args,
    test: Test,
    shared: &Shared,
) -> anyhow::Result<Tally> {
    concurrent_batches(seed, args, test, shared, |command| {
        let client = client.clone();
        async move {
            client
                .call(command)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    })
    .await
}
