//! Authentication and protected mode, against the real binary.

mod common;

use common::{cmd, frame, Server};
use kvstore_client::{Client, Command, ErrorCode, Reply};

const TOKEN: &str = "correct horse battery staple";

fn code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => ErrorCode::from_code(*code),
        _ => None,
    }
}

fn auth(token: &str) -> Command {
    Command::Auth {
        token: token.as_bytes().to_vec().into(),
    }
}

fn server_with_token(dir: &std::path::Path) -> Server {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    Server::start(
        &dir.join("kvstore.db"),
        &["--auth-token-file", token_file.to_str().unwrap()],
    )
}

#[test]
fn nothing_but_auth_is_accepted_until_the_token_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_token(dir.path());
    let mut c = server.client();
    assert_eq!(
        code(&c.call(cmd::get("k"))),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(
        code(&c.call(cmd::set("k", "v"))),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(code(&c.call(auth("wrong"))), Some(ErrorCode::AuthFailed));
    assert_eq!(c.call(auth(TOKEN)), Reply::Ok);
    assert_eq!(c.call(cmd::set("k", "v")), Reply::Ok);
    assert_eq!(c.call(cmd::get("k")), Reply::Value(Some("v".into())));
    // Another connection is not logged in by this one.
    assert_eq!(
        code(&server.client().call(cmd::get("k"))),
        Some(ErrorCode::Unauthenticated)
    );
}

#[test]
fn before_auth_only_small_frames_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_token(dir.path());
    let mut c = server.client();
    let body = kvstore_client::codec::encode(&kvstore_client::Request {
        id: 1,
        command: cmd::set("k", vec![0u8; 8000]),
    })
    .unwrap();
    c.send_raw(&frame(&body));
    let reply = c.recv().expect("an error frame").reply;
    assert_eq!(code(&reply), Some(ErrorCode::FrameTooLarge));
    assert!(c.is_closed());
}

#[test]
fn failed_attempts_are_slowed_and_the_fifth_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_token(dir.path());
    let mut c = server.client();
    for attempt in 1..=5 {
        assert_eq!(
            code(&c.call(auth("guess"))),
            Some(ErrorCode::AuthFailed),
            "attempt {attempt}"
        );
    }
    assert!(
        c.is_closed(),
        "the connection stays open after five failures"
    );
}

#[test]
fn the_client_library_and_the_cli_send_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_token(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let good = Client::builder()
        .addr(server.addr.to_string())
        .auth_token(TOKEN)
        .build()
        .unwrap();
    rt.block_on(good.set("k", "v")).unwrap();
    let bad = Client::builder()
        .addr(server.addr.to_string())
        .auth_token("nope")
        .max_attempts(3)
        .build()
        .unwrap();
    let error = rt.block_on(bad.get("k")).unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::AuthFailed));
    assert!(!error.is_retryable());
    let none = Client::connect(server.addr.to_string()).unwrap();
    assert_eq!(
        rt.block_on(none.get("k")).unwrap_err().code(),
        Some(ErrorCode::Unauthenticated)
    );

    let out = std::process::Command::new(common::cli_path())
        .args(["--addr", &server.addr.to_string(), "get", "k"])
        .env("KVSTORE_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"v");
    let token_file = dir.path().join("token");
    let out = std::process::Command::new(common::cli_path())
        .args([
            "--addr",
            &server.addr.to_string(),
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "exists",
            "k",
        ])
        .env_remove("KVSTORE_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"true\n");
    let out = std::process::Command::new(common::cli_path())
        .args([
            "--addr",
            &server.addr.to_string(),
            "--timeout-ms",
            "2000",
            "get",
            "k",
        ])
        .env_remove("KVSTORE_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without a token, a non-loopback address is refused unless allowed. (Only
/// the refusal is run: tests listen on loopback only.)
#[test]
fn protected_mode_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvstore-server"))
        .args(["--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("kvstore.db"))
        .env_remove("KVSTORE_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("protected mode"), "{stderr}");
}
