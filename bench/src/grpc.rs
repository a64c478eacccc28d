//! The gRPC load: each connection is a tonic channel to the server's
//! `--grpc-listen` port, and each batch is `-P` concurrent calls on it, so
//! `-c 50` is 50 clients with one call in flight each, as for the other
//! protocols. Requests are the native ones ([`Requests::command`]) made as
//! the `kvstore.v1.KeyValue` method of the same meaning; a call's latency
//! runs from the start of its batch to its answer.

use anyhow::Context;
use kvstore_client::{Command, Expiry};
use kvstore_proto::v1::{
    BulkPutRequest, DeleteRequest, ExistsRequest, GetRequest, KeyValuePair, PutRequest,
};
use tonic::transport::Channel;

use crate::load::{concurrent_batches, Shared, Tally};
use crate::{Args, Test};

pub type KeyValueClient = kvstore_proto::v1::key_value_client::KeyValueClient<Channel>;

/// One HTTP/2 connection to `addr` (HOST:PORT).
pub async fn connect(addr: &str) -> anyhow::Result<KeyValueClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect to the gRPC door at {addr}"))?;
    Ok(KeyValueClient::new(channel).max_decoding_message_size(usize::MAX))
}

/// One connection's loop.
pub(crate) async fn connection(
    client: KeyValueClient,
    seed: u64,
    args: &Args,
    test: Test,
    shared: &Shared,
) -> anyhow::Result<Tally> {
    concurrent_batches(seed, args, test, shared, |command| {
        // A clone of a tonic client shares its connection.
        let client = client.clone();
        async move {
            let answer = call(client, command).await;
            answer.map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        }
    })
    .await
}

/// Makes `command` as the gRPC method of the same meaning.
async fn call(mut client: KeyValueClient, command: Command) -> Result<(), tonic::Status> {
    match command {
        Command::Set { key, value } => client
            .put(PutRequest {
                key,
                value,
                ttl_ms: 0,
            })
            .await
            .map(drop),
        Command::SetExpiring {
            key,
            value,
            expiry: Expiry::In(ttl_ms),
            ..
        } => client
            .put(PutRequest { key, value, ttl_ms })
            .await
            .map(drop),
        Command::Get { key } => client
            .get(GetRequest {
                key,
                ..Default::default()
            })
            .await
            .map(drop),
        Command::Delete { key } => client.delete(DeleteRequest { key }).await.map(drop),
        Command::Exists { key } => client.exists(ExistsRequest { key }).await.map(drop),
        Command::BulkSet { items } => {
            let pairs = items
                .into_iter()
                .map(|(key, value)| KeyValuePair { key, value })
                .collect();
            client.bulk_put(BulkPutRequest { pairs }).await.map(drop)
        }
        other => unreachable!("the bench sends no {other:?}"),
    }
}
