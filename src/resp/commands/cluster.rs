//! `CLUSTER`: Redis Cluster's commands. `KEYSLOT` gives a key's hash slot
//! (`kvstore_client::slot`), the same as Redis Cluster's for every key, so a
//! cluster client and kvstore agree on where a key belongs.

use bytes::Bytes;

use super::{is, Outcome, Value};

pub(super) fn cluster(args: &[Bytes]) -> Outcome {
    let sub = &args[0];
    let reply = if !is(sub, "keyslot") {
        Value::error(format!(
            "ERR unknown subcommand '{}'. Try CLUSTER HELP.",
            super::clip(sub)
        ))
    } else if args.len() != 2 {
        Value::error("ERR wrong number of arguments for 'cluster|keyslot' command")
    } else {
        Value::Int(kvstore_client::slot::slot_of(&args[1]).into())
    };
    Outcome::Ready(reply)
}
