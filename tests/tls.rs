//! TLS: a throw-away certificate made at run time (rcgen); a TLS client is
//! served, a plain one is refused, and the CLI speaks TLS too.

mod common;

use std::path::Path;

use common::{cmd, throwaway_certificate, Server};
use kvstore_client::{Client, Error};

fn tls_server(dir: &Path) -> (Server, std::path::PathBuf) {
    let (cert, key) = throwaway_certificate(dir);
    let server = Server::start(
        &dir.join("kvstore.db"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    (server, cert)
}

#[test]
fn a_tls_client_is_served_and_a_plain_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let client = Client::builder()
        .addr(format!("kvstores://{}", server.addr))
        .tls_ca_file(&ca)
        .build()
        .unwrap();
    rt.block_on(client.set("k", "over tls")).unwrap();
    assert_eq!(
        rt.block_on(client.get("k")).unwrap().as_deref(),
        Some(&b"over tls"[..])
    );

    // A plain client's frame is not a TLS hello: the handshake fails and the
    // server closes the connection without answering.
    let mut plain = server.client();
    plain.send(cmd::get("k"));
    assert!(
        plain.recv().is_none(),
        "a plain client got an answer from a TLS server"
    );

    // A client that does not trust the certificate is refused by TLS itself.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _) = throwaway_certificate(other_dir.path());
    let stranger = Client::builder()
        .addr(format!("kvstores://{}", server.addr))
        .tls_ca_file(&other_ca)
        .max_attempts(1)
        .build()
        .unwrap();
    let error = rt.block_on(stranger.get("k")).unwrap_err();
    assert!(matches!(error, Error::Tls(_)), "{error}");

    // TLS asked for without a CA is a setup error, not a network one.
    assert!(matches!(
        Client::builder()
            .addr(format!("kvstores://{}", server.addr))
            .build(),
        Err(Error::Tls(_))
    ));
}

#[test]
fn the_cli_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = tls_server(dir.path());
    let run = |args: &[&str]| {
        std::process::Command::new(common::cli_path())
            .args([
                "--addr",
                &server.addr.to_string(),
                "--tls",
                "--tls-ca",
                ca.to_str().unwrap(),
            ])
            .args(args)
            .env_remove("KVSTORE_ADDR")
            .output()
            .unwrap()
    };
    assert_eq!(run(&["set", "k", "v"]).stdout, b"OK\n");
    assert_eq!(run(&["get", "k"]).stdout, b"v");
}

/// The RESP door speaks TLS with the same certificate: `redis-cli --tls`
/// (Debian's redis-tools, installed by `.ci/run`) is served.
#[test]
fn the_resp_door_speaks_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = throwaway_certificate(dir.path());
    let server = Server::start(
        &dir.path().join("kvstore.db"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--resp-listen",
            "127.0.0.1:0",
        ],
    );
    let port = server.resp.unwrap().port().to_string();
    let cli = |tls: bool, args: &[&str]| {
        let mut command = std::process::Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &port]);
        if tls {
            command.args(["--tls", "--cacert", cert.to_str().unwrap()]);
        }
        let out = command
            .args(args)
            .output()
            .expect("run redis-cli (redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(true, &["SET", "k", "over tls"]), "OK\n");
    assert_eq!(cli(true, &["GET", "k"]), "over tls\n");
    assert_ne!(
        cli(false, &["GET", "k"]),
        "over tls\n",
        "plain RESP is not served"
    );
}
