//! Error classification and address parsing: what a caller relies on to
//! decide whether to retry and where to connect.
//!
//! (Its presence also makes `cargo test` build the `kvstore` binary, which
//! the end-to-end tests in the workspace root run.)

use std::time::Duration;

use kvstore_client::{addr, Error, ErrorCode};

fn server(code: ErrorCode) -> Error {
    Error::Server {
        code: code as u32,
        message: String::new(),
    }
}

#[test]
fn only_transient_failures_are_retryable() {
    let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(Error::Connect {
        addr: "x:1".into(),
        source: io()
    }
    .is_retryable());
    assert!(Error::ConnectionLost("reset".into()).is_retryable());
    assert!(Error::Timeout {
        what: "request",
        after: Duration::from_secs(1)
    }
    .is_retryable());
    assert!(server(ErrorCode::TooManyConnections).is_retryable());
    assert!(server(ErrorCode::ShuttingDown).is_retryable());
    for code in [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::KeyTooLarge,
        ErrorCode::ValueTooLarge,
        ErrorCode::TooManyItems,
        ErrorCode::StorageFailed,
        ErrorCode::Unauthenticated,
        ErrorCode::AuthFailed,
    ] {
        assert!(!server(code).is_retryable(), "{code:?}");
        assert_eq!(server(code).code(), Some(code));
    }
    assert!(
        !Error::Server {
            code: 999,
            message: String::new()
        }
        .is_retryable(),
        "unknown codes are not retried"
    );
    assert!(!Error::Protocol("?".into()).is_retryable());
    assert!(!Error::InvalidAddress("?".into()).is_retryable());
}

#[test]
fn addresses_take_an_optional_scheme() {
    assert_eq!(
        addr::parse("kvstore://127.0.0.1:65433").unwrap(),
        "127.0.0.1:65433"
    );
    assert_eq!(
        addr::parse("kvstore://db.example:7000/").unwrap(),
        "db.example:7000"
    );
    assert_eq!(addr::parse("[::1]:65433").unwrap(), "[::1]:65433");
    for bad in [
        "",
        "localhost",
        "http://x:1",
        "kvstore://:1",
        "x:99999",
        "x:port",
    ] {
        assert!(
            matches!(addr::parse(bad), Err(Error::InvalidAddress(_))),
            "{bad:?}"
        );
    }
}

/// `Incr` and `Append` are resent only after errors that prove the first
/// attempt never reached the server.
#[test]
fn only_requests_that_never_arrived_may_be_resent_when_not_idempotent() {
    use kvstore_client::{Command, Condition};
    let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(Error::Connect {
        addr: "x:1".into(),
        source: io()
    }
    .never_arrived());
    assert!(Error::Timeout {
        what: "connect",
        after: Duration::from_secs(1)
    }
    .never_arrived());
    assert!(server(ErrorCode::TooManyConnections).never_arrived());
    assert!(server(ErrorCode::ShuttingDown).never_arrived());
    assert!(!Error::ConnectionLost("reset".into()).never_arrived());
    assert!(!Error::Timeout {
        what: "request",
        after: Duration::from_secs(1)
    }
    .never_arrived());

    let key = || bytes::Bytes::from_static(b"k");
    assert!(!Command::Incr { key: key(), by: 1 }.is_idempotent());
    assert!(!Command::Append {
        key: key(),
        value: key()
    }
    .is_idempotent());
    for command in [
        Command::Set {
            key: key(),
            value: key(),
        },
        Command::SetIf {
            key: key(),
            value: key(),
            condition: Condition::Absent,
            get: false,
        },
        Command::GetDel { key: key() },
        Command::DeleteMany { keys: vec![key()] },
        Command::Flush,
    ] {
        assert!(command.is_idempotent(), "{command:?}");
    }
}
