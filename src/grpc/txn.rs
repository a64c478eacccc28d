//! The gRPC `Txn` method's messages as the native transaction's
//! (`Command::Txn`, docs/transactions.md), and its replies back.

use kvstore_client::{Command, Compare, CompareOp, Reply, Target};
use kvstore_proto::v1::{self as pb, compare, txn_op, txn_op_response};
use tonic::Status;

use super::service::put_command;

/// What each operation of a branch was, to shape its reply.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Put,
    Get,
    Delete,
    Incr,
}

/// The native transaction, and the kinds of each branch's operations.
pub fn native(request: pb::TxnRequest) -> Result<(Command, [Vec<Kind>; 2]), Status> {
    let compare = (request.compare.into_iter())
        .map(compare_of)
        .collect::<Result<_, _>>()?;
    let (success, success_kinds) = branch(request.success)?;
    let (failure, failure_kinds) = branch(request.failure)?;
    let txn = Command::Txn {
        compare,
        success,
        failure,
    };
    Ok((txn, [success_kinds, failure_kinds]))
}

fn compare_of(c: pb::Compare) -> Result<Compare, Status> {
    let op = match pb::CompareOp::try_from(c.op) {
        Ok(pb::CompareOp::Equal) => CompareOp::Equal,
        Ok(pb::CompareOp::NotEqual) => CompareOp::NotEqual,
        Ok(pb::CompareOp::Less) => CompareOp::Less,
        Ok(pb::CompareOp::Greater) => CompareOp::Greater,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown CompareOp {}",
                c.op
            )))
        }
    };
    let target = match c.target {
        Some(compare::Target::Value(value)) => Target::Value(value),
        Some(compare::Target::Exists(exists)) => Target::Exists(exists),
        Some(compare::Target::ModRevision(r)) => Target::ModRevision(r),
        Some(compare::Target::CreateRevision(r)) => Target::CreateRevision(r),
        None => return Err(Status::invalid_argument("a Compare without a target")),
    };
    Ok(Compare {
        key: c.key,
        target,
        op,
    })
}

fn branch(ops: Vec<pb::TxnOp>) -> Result<(Vec<Command>, Vec<Kind>), Status> {
    ops.into_iter().map(command_of).collect()
}

fn command_of(op: pb::TxnOp) -> Result<(Command, Kind), Status> {
    Ok(match op.op {
        Some(txn_op::Op::Put(put)) => (put_command(put), Kind::Put),
        Some(txn_op::Op::Get(get)) if get.with_version => {
            (Command::GetWithVersion { key: get.key }, Kind::Get)
        }
        Some(txn_op::Op::Get(get)) => (Command::Get { key: get.key }, Kind::Get),
        Some(txn_op::Op::Delete(delete)) => (Command::Delete { key: delete.key }, Kind::Delete),
        Some(txn_op::Op::Incr(incr)) => (
            Command::Incr {
                key: incr.key,
                by: incr.by,
            },
            Kind::Incr,
        ),
        None => return Err(Status::invalid_argument("a TxnOp without an operation")),
    })
}

/// The gRPC answer to the native one, `kinds` those of the branch that ran.
pub fn response(succeeded: bool, replies: Vec<Reply>, kinds: &[Kind]) -> pb::TxnResponse {
    let responses = (replies.into_iter().zip(kinds))
        .map(|(reply, kind)| pb::TxnOpResponse {
            response: Some(one(reply, *kind)),
        })
        .collect();
    pb::TxnResponse {
        succeeded,
        responses,
    }
}

fn one(reply: Reply, kind: Kind) -> txn_op_response::Response {
    use txn_op_response::Response as R;
    match (kind, reply) {
        (_, Reply::Error { code, message }) => R::Error(pb::TxnError { code, message }),
        (Kind::Put, _) => R::Put(pb::PutResponse {}),
        (Kind::Get, Reply::Value(value)) => R::Get(pb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            ..Default::default()
        }),
        (
            Kind::Get,
            Reply::Versioned {
                value,
                modified,
                created,
            },
        ) => R::Get(pb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            mod_revision: modified,
            create_revision: created,
        }),
        (Kind::Delete, Reply::Bool(deleted)) => R::Delete(pb::DeleteResponse { deleted }),
        (Kind::Incr, Reply::Int(n)) => R::Incr(n),
        (kind, other) => R::Error(pb::TxnError {
            code: kvstore_client::ErrorCode::StorageFailed as u32,
            message: format!("unexpected reply to {kind:?}: {other:?}"),
        }),
    }
}
