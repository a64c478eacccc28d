//! Connection commands: PING, ECHO (in the dispatcher), HELLO, AUTH, SELECT,
//! QUIT (in the dispatcher), CLIENT, and the refusal before login.

use bytes::Bytes;

use super::{is, ok, syntax_error, wrong_pass, Ctx, Outcome, Session};
use crate::resp::codec::Value;
use crate::session::login::Attempt;

/// PING [message]
pub(super) fn ping(args: &[Bytes]) -> Outcome {
    match args {
        [] => Outcome::Ready(Value::Simple("PONG")),
        [message] => Outcome::Ready(Value::Bulk(message.clone())),
        _ => Outcome::Ready(Value::error(
            "ERR wrong number of arguments for 'ping' command",
        )),
    }
}

/// SELECT index: only database 0 exists.
pub(super) fn select(args: &[Bytes]) -> Outcome {
    match crate::storage::change::parse_i64(&args[0]) {
        Some(0) => ok(),
        Some(_) => Outcome::Ready(Value::error("ERR DB index is out of range")),
        None => Outcome::Ready(super::not_an_integer()),
    }
}

/// Answers a command sent before login, and closes the connection after too
/// many (as the native door does).
pub(super) fn refuse_unauthenticated(session: &mut Session) -> Outcome {
    session.closing |= session.login.refuse();
    Outcome::Ready(Value::error("NOAUTH Authentication required."))
}

/// Checks a password (the server's token) for user `default`; a failure is
/// answered after the same growing pause as on the native door.
async fn login(
    user: &[u8],
    password: &[u8],
    session: &mut Session,
    ctx: &Ctx<'_>,
) -> Result<(), Value> {
    let passed = user == b"default" && ctx.db.auth.check(password);
    match session.login.attempt(&ctx.db.auth, passed).await {
        Attempt::Passed => Ok(()),
        Attempt::Failed { close } => {
            session.closing |= close;
            Err(wrong_pass())
        }
    }
}

/// AUTH [username] password
pub(super) async fn auth(args: &[Bytes], session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    let (user, password) = match args {
        [password] => (&b"default"[..], password),
        [user, password] => (&user[..], password),
        _ => return Outcome::Ready(syntax_error()),
    };
    if !ctx.db.auth.required() {
        return Outcome::Ready(Value::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    match login(user, password, session, ctx).await {
        Ok(()) => ok(),
        Err(e) => Outcome::Ready(e),
    }
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]]
pub(super) async fn hello(args: &[Bytes], session: &mut Session, ctx: &Ctx<'_>) -> Outcome {
    let mut proto = session.proto;
    let mut rest = args;
    if let Some((version, tail)) = rest.split_first() {
        match crate::storage::change::parse_i64(version) {
            Some(v @ (2 | 3)) => proto = v as u8,
            Some(_) => return Outcome::Ready(Value::error("NOPROTO unsupported protocol version")),
            None => {
                return Outcome::Ready(Value::error(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        }
        rest = tail;
    }
    let mut credentials = None;
    let mut name = None;
    while let Some((option, tail)) = rest.split_first() {
        match tail {
            [user, password, more @ ..] if is(option, "auth") => {
                credentials = Some((user, password));
                rest = more;
            }
            [client, more @ ..] if is(option, "setname") => {
                if !valid_name(client) {
                    return Outcome::Ready(bad_name());
                }
                name = Some(client.clone());
                rest = more;
            }
            _ => {
                return Outcome::Ready(Value::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    super::clip(option)
                )))
            }
        }
    }
    if let Some((user, password)) = credentials {
        if ctx.db.auth.required() {
            if let Err(e) = login(user, password, session, ctx).await {
                return Outcome::Ready(e);
            }
        }
    }
    if !session.login.authenticated() {
        return Outcome::Ready(Value::error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    session.proto = proto;
    if name.is_some() {
        session.name = name;
    }
    Outcome::Ready(Value::Map(vec![
        (Value::text("server"), Value::text("kvstore")),
        (
            Value::text("version"),
            Value::text(super::server::REDIS_VERSION),
        ),
        (
            Value::text("kvstore_version"),
            Value::text(env!("CARGO_PKG_VERSION")),
        ),
        (Value::text("proto"), Value::Int(i64::from(proto))),
        (Value::text("id"), Value::Int(session.id as i64)),
        (Value::text("mode"), Value::text("standalone")),
        (Value::text("role"), Value::text("master")),
        (Value::text("modules"), Value::Array(Vec::new())),
    ]))
}

/// CLIENT ID | SETNAME name | GETNAME | SETINFO attr value
pub(super) fn client(args: &[Bytes], session: &mut Session) -> Outcome {
    let sub = &args[0];
    let value = match &args[1..] {
        [] if is(sub, "id") => Value::Int(session.id as i64),
        [] if is(sub, "getname") => session.name.clone().map_or(Value::Nil, Value::Bulk),
        [name] if is(sub, "setname") => {
            if !valid_name(name) {
                return Outcome::Ready(bad_name());
            }
            session.name = (!name.is_empty()).then(|| name.clone());
            Value::Simple("OK")
        }
        // Client libraries announce themselves; nothing to keep.
        [attr, _] if is(sub, "setinfo") && (is(attr, "lib-name") || is(attr, "lib-ver")) => {
            Value::Simple("OK")
        }
        _ if ["id", "getname", "setname", "setinfo"]
            .iter()
            .any(|known| is(sub, known)) =>
        {
            Value::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                super::super::text(sub).to_lowercase()
            ))
        }
        _ => Value::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            super::clip(sub)
        )),
    };
    Outcome::Ready(value)
}

/// Redis's rule for client names: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn bad_name() -> Value {
    Value::error("ERR Client names cannot contain spaces, newlines or special characters.")
}
