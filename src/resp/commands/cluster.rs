//! `CLUSTER`: Redis Cluster's commands. `KEYSLOT` gives a key's hash slot
//! (`kvstore_client::slot`), the same as Redis Cluster's for every key, so a
//! cluster client and kvstore agree on where a key belongs. In cluster mode
//! `SLOTS`, `SHARDS`, `NODES`, `MYID` and `INFO` show the groups as Redis
//! Cluster's shards: each group's leader as its master, its other nodes as
//! replicas, at their RESP addresses (docs/resp.md).

use bytes::Bytes;

use super::{is, Ctx, Outcome, Value};
use crate::raft::node::{Cluster, RedisShard};

/// What a subcommand that shows the cluster answers.
type View = fn(&Cluster) -> Value;

/// The subcommands that show the cluster.
const VIEWS: &[(&str, View)] = &[
    ("slots", slots),
    ("shards", shards),
    ("nodes", nodes),
    ("myid", |cluster| Value::bulk(node_name(cluster.id()))),
    ("info", info),
];

pub(super) async fn cluster(args: &[Bytes], ctx: &Ctx<'_>) -> Outcome {
    let sub = &args[0];
    let reply = if is(sub, "keyslot") {
        match args.len() {
            2 => Value::Int(kvstore_client::slot::slot_of(&args[1]).into()),
            _ => Value::error("ERR wrong number of arguments for 'cluster|keyslot' command"),
        }
    } else if is(sub, "countkeysinslot") {
        count_keys_in_slot(args, ctx).await
    } else if let Some((name, view)) = VIEWS.iter().find(|(name, _)| is(sub, name)) {
        match (ctx.db.cluster(), args.len()) {
            (None, _) => Value::error("ERR This instance has cluster support disabled"),
            (Some(cluster), 1) => view(cluster),
            _ => Value::error(format!(
                "ERR wrong number of arguments for 'cluster|{name}' command"
            )),
        }
    } else {
        Value::error(format!(
            "ERR unknown subcommand '{}'. Try CLUSTER HELP.",
            super::clip(sub)
        ))
    };
    Outcome::Ready(reply)
}

/// `CLUSTER COUNTKEYSINSLOT slot`: the keys of the slot in this node's own
/// data ([`Cluster::keys_in_slot`]).
async fn count_keys_in_slot(args: &[Bytes], ctx: &Ctx<'_>) -> Value {
    let [_, slot] = args else {
        return Value::error("ERR wrong number of arguments for 'cluster|countkeysinslot' command");
    };
    let slot = std::str::from_utf8(slot)
        .ok()
        .and_then(|s| s.parse::<u16>().ok());
    let Some(slot) = slot.filter(|s| *s < kvstore_client::slot::SLOTS) else {
        return Value::error("ERR Invalid or out of range slot");
    };
    match ctx.db.cluster() {
        None => Value::error("ERR This instance has cluster support disabled"),
        Some(cluster) => match cluster.keys_in_slot(slot).await {
            Ok(count) => Value::Int(count as i64),
            Err(e) => Value::error(format!("ERR {e}")),
        },
    }
}

/// A node's name as Redis Cluster gives one: 40 hex digits.
fn node_name(id: u64) -> String {
    format!("{id:040x}")
}

/// `host:port` split, the port 0 if it is not one.
fn host_port(addr: &str) -> (&str, i64) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']), port.parse().unwrap_or(0)),
        None => (addr, 0),
    }
}

/// `CLUSTER SLOTS`: per slot range, its master then its replicas, each
/// as host, port and name.
fn slots(cluster: &Cluster) -> Value {
    let shards = cluster.redis_shards();
    let mut ranges: Vec<(&(u16, u16), &RedisShard)> = (shards.iter())
        .flat_map(|shard| shard.slots.iter().map(move |range| (range, shard)))
        .collect();
    ranges.sort_by_key(|((first, _), _)| *first);
    let range = |((first, last), shard): (&(u16, u16), &RedisShard)| {
        let mut range = vec![Value::Int((*first).into()), Value::Int((*last).into())];
        range.extend(shard.nodes.iter().map(|(id, addr)| {
            let (host, port) = host_port(addr);
            Value::Array(vec![
                Value::bulk(host.to_string()),
                Value::Int(port),
                Value::bulk(node_name(*id)),
            ])
        }));
        Value::Array(range)
    };
    Value::Array(ranges.into_iter().map(range).collect())
}

/// `CLUSTER SHARDS`: per group, its slot ranges and its nodes.
fn shards(cluster: &Cluster) -> Value {
    let text = |s: &str| Value::bulk(s.to_string());
    let shard = |shard: RedisShard| {
        let slots = (shard.slots.iter())
            .flat_map(|(first, last)| [Value::Int((*first).into()), Value::Int((*last).into())])
            .collect();
        let nodes = (shard.nodes.iter().enumerate())
            .map(|(i, (id, addr))| {
                let (host, port) = host_port(addr);
                Value::Map(vec![
                    (text("id"), Value::bulk(node_name(*id))),
                    (text("port"), Value::Int(port)),
                    (text("ip"), text(host)),
                    (text("endpoint"), text(host)),
                    (
                        text("role"),
                        text(if i == 0 { "master" } else { "replica" }),
                    ),
                    (text("replication-offset"), Value::Int(0)),
                    (text("health"), text("online")),
                ])
            })
            .collect();
        Value::Map(vec![
            (text("slots"), Value::Array(slots)),
            (text("nodes"), Value::Array(nodes)),
        ])
    };
    Value::Array(cluster.redis_shards().into_iter().map(shard).collect())
}

/// `CLUSTER NODES`: a line per node. Redis gives a node one role, so a
/// node leading any group is a master with the slots of the groups it
/// leads, and any other a replica of the master of its first group.
fn nodes(cluster: &Cluster) -> Value {
    let shards = cluster.redis_shards();
    // Each master as a shard of one node, with the slots of every group
    // it leads.
    let mut masters: Vec<RedisShard> = Vec::new();
    for shard in &shards {
        let Some(master) = shard.nodes.first() else {
            continue;
        };
        match masters.iter_mut().find(|m| m.nodes[0] == *master) {
            Some(known) => known.slots.extend(&shard.slots),
            None => masters.push(RedisShard {
                group: shard.group,
                slots: shard.slots.clone(),
                nodes: vec![master.clone()],
            }),
        }
    }
    let me = cluster.id();
    let flags = |id: u64, role: &str| match id == me {
        true => format!("myself,{role}"),
        false => role.to_string(),
    };
    let mut lines = String::new();
    for RedisShard { slots, nodes, .. } in &masters {
        let (id, addr) = &nodes[0];
        let slots: Vec<String> = (slots.iter())
            .map(|(f, l)| {
                if f == l {
                    f.to_string()
                } else {
                    format!("{f}-{l}")
                }
            })
            .collect();
        lines.push_str(&format!(
            "{} {addr}@0 {} - 0 0 0 connected {}\n",
            node_name(*id),
            flags(*id, "master"),
            slots.join(" ")
        ));
    }
    let mut listed: Vec<u64> = masters.iter().map(|m| m.nodes[0].0).collect();
    for shard in &shards {
        let Some((master, _)) = shard.nodes.first() else {
            continue;
        };
        for (id, addr) in &shard.nodes[1..] {
            if !listed.contains(id) {
                listed.push(*id);
                lines.push_str(&format!(
                    "{} {addr}@0 {} {} 0 0 0 connected\n",
                    node_name(*id),
                    flags(*id, "slave"),
                    node_name(*master)
                ));
            }
        }
    }
    Value::Verbatim(lines)
}

/// `CLUSTER INFO`: the fields cluster clients read.
fn info(cluster: &Cluster) -> Value {
    let shards = cluster.redis_shards();
    let mut nodes: Vec<u64> = shards
        .iter()
        .flat_map(|s| s.nodes.iter().map(|n| n.0))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let state = match shards.iter().all(|s| !s.nodes.is_empty()) {
        true => "ok",
        false => "fail",
    };
    Value::Verbatim(format!(
        "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:16384\r\n\
         cluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
         cluster_known_nodes:{}\r\ncluster_size:{}\r\n",
        nodes.len(),
        shards.len()
    ))
}
