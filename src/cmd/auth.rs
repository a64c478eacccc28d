//! `Auth { token }`: authenticate the connection. The handler treats the
//! first success as the connection's login (see `crate::handler`); this is
//! the check itself, also used for an `Auth` sent after logging in.

use kvstore_client::{ErrorCode, Reply};

use crate::db::Db;

pub(super) fn apply(token: &[u8], db: &Db) -> Reply {
    if db.auth.check(token) {
        Reply::Ok
    } else {
        Reply::error(ErrorCode::AuthFailed, "wrong auth token")
    }
}
