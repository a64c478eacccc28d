//! `Cluster`: administration of the cluster this node belongs to (see
//! `crate::raft::node`). A server in single-node mode refuses it.

use kvstore_client::{ClusterRequest, ErrorCode, Reply};

use crate::db::Db;

pub async fn apply(request: ClusterRequest, db: &Db) -> Reply {
    let Some(cluster) = db.cluster() else {
        return Reply::error(
            ErrorCode::ClusterFailed,
            "this server runs alone (start it with --node-id to form a cluster)",
        );
    };
    match cluster.command(request).await {
        Ok(status) => Reply::Cluster(Box::new(status)),
        Err(e) => super::error_reply(&e),
    }
}
