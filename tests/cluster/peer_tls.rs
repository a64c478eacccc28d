//! Mutual TLS on the raft port: three nodes with certificates from one CA
//! (made at run time with rcgen) replicate; a plain TCP client, a TLS peer
//! without a certificate, with one from another CA, with a CA-signed
//! identity that is not a member, and with a member's certificate but
//! another sender in its message all get no answer, and the cluster keeps
//! working. A genuine peer's message, sent the same way, is answered: the
//! probe can tell the two apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvstore::raft::network::{Envelope, Rpc, RpcReply};
use kvstore::raft::FIRST_GROUP;
use openraft::raft::VoteRequest;
use openraft::Vote;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::*;

/// A certificate authority made for one test.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, in PEM.
pub(crate) struct Identity {
    cert: String,
    key: String,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate naming `node-ID`.
    pub(crate) fn node(&self, id: u64) -> Identity {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![format!("node-{id}")]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA and node `id`'s certificate under `dir`; returns the
    /// server's `--raft-tls-*` arguments.
    pub(crate) fn server_args(&self, dir: &Path, id: u64) -> Vec<String> {
        let identity = self.node(id);
        let path = |name: &str| dir.join(format!("node{id}-{name}.pem"));
        std::fs::write(path("cert"), &identity.cert).unwrap();
        std::fs::write(path("key"), &identity.key).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.pem).unwrap();
        let arg = |p: PathBuf| p.to_str().unwrap().to_string();
        vec![
            "--raft-tls-cert".into(),
            arg(path("cert")),
            "--raft-tls-key".into(),
            arg(path("key")),
            "--raft-tls-ca".into(),
            arg(dir.join("ca.pem")),
        ]
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(roots)
    }
}

/// Starts node `me` of `all` with raft TLS from `ca`.
fn start_tls(me: &Spec, all: &[Spec], dir: &Path, ca: &Ca) -> Server {
    let args = ca.server_args(dir, me.id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with(me, all, dir, |peer| peer.raft, &args)
}

/// A TLS client to node `target`'s raft port, trusting `ca` and showing
/// `identity` (none: no client certificate).
fn connector(ca: &Ca, identity: Option<&Identity>) -> TlsConnector {
    let builder = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(ca.roots());
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(identity.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    TlsConnector::from(Arc::new(config))
}

/// Sends group `group` a vote request from candidate `sender` in `term`
/// over `io`; the raft answer if one came back within 5 s (a TLS alert is
/// not one).
pub(crate) async fn ask_vote<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    group: u64,
    sender: u64,
    term: u64,
) -> Option<RpcReply> {
    let rpc = Rpc::Vote(VoteRequest::new(Vote::new(term, sender), None));
    ask(io, group, rpc).await
}

/// Sends group `group` `rpc` over `io`; the answer if one came back within
/// 5 s.
pub(crate) async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    group: u64,
    rpc: Rpc,
) -> Option<RpcReply> {
    let body = codec::encode(&Envelope { group, rpc }).unwrap();
    if io.write_all(&common::frame(&body)).await.is_err() || io.flush().await.is_err() {
        return None;
    }
    let reply = async {
        let len = io.read_u32().await? as usize;
        let mut body = vec![0u8; len.min(1 << 20)];
        io.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    match tokio::time::timeout(Duration::from_secs(5), reply).await {
        Ok(Ok(body)) => codec::decode::<RpcReply>(&body).ok(),
        _ => None,
    }
}

/// [`ask_vote`] of the cluster's data group: true if answered.
async fn answered<S: AsyncRead + AsyncWrite + Unpin>(io: S, sender: u64, term: u64) -> bool {
    ask_vote(io, FIRST_GROUP, sender, term).await.is_some()
}

/// Over TLS to node `target` at `raft` as `identity`, a vote from `sender`:
/// true if answered.
async fn answered_tls(
    raft: SocketAddr,
    target: u64,
    connector: TlsConnector,
    sender: u64,
    term: u64,
) -> bool {
    let stream = tokio::net::TcpStream::connect(raft).await.unwrap();
    let name = ServerName::try_from(format!("node-{target}")).unwrap();
    match connector.connect(name, stream).await {
        Ok(stream) => answered(stream, sender, term).await,
        Err(_) => false,
    }
}

#[test]
fn the_raft_port_answers_only_members_that_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (Ca::new(), Ca::new());
    let nodes = specs(3);
    let _servers: Vec<Server> = (nodes.iter())
        .map(|n| start_tls(n, &nodes, dir.path(), &ca))
        .collect();
    assert!(cli(nodes[0].addr, &["cluster", "init"]).status.success());
    let leader = wait_for_leader(&nodes);
    assert_eq!(try_call(leader.addr, cmd::set("k", "1")), Some(Reply::Ok));
    let term = status(leader.addr).unwrap().term;

    // The probe: node `target`, a follower, gets a vote from `sender`, a
    // member, in the current term (it answers "not granted" and nothing
    // changes: it has voted in this term).
    let target = nodes.iter().find(|n| n.id != leader.id).unwrap();
    let sender = nodes.iter().find(|n| n.id != target.id).unwrap().id;
    let rt = common::runtime();
    let probe = |identity: Option<&Identity>, ca: &Ca, claimed: u64| {
        rt.block_on(answered_tls(
            target.raft,
            target.id,
            connector(ca, identity),
            claimed,
            term,
        ))
    };
    assert!(
        probe(Some(&ca.node(sender)), &ca, sender),
        "a member's message must be answered"
    );
    let plain = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(target.raft).await.unwrap();
        answered(stream, sender, term).await
    });
    assert!(!plain, "plain TCP answered");
    assert!(!probe(None, &ca, sender), "no certificate answered");
    let foreign = other_ca.node(sender);
    assert!(!probe(Some(&foreign), &ca, sender), "another CA answered");
    assert!(!probe(Some(&ca.node(9)), &ca, 9), "a non-member answered");
    let other = nodes.iter().find(|n| n.id != target.id && n.id != sender);
    let other = other.unwrap().id;
    assert!(
        !probe(Some(&ca.node(sender)), &ca, other),
        "a member speaking for another answered"
    );

    // The cluster kept its leader and term, and still replicates.
    assert_eq!(try_call(leader.addr, cmd::set("k", "2")), Some(Reply::Ok));
    let after = status(leader.addr).unwrap();
    assert_eq!((after.role.as_str(), after.term), ("leader", term));
    wait_applied(&nodes, after.applied_index.unwrap());
}

#[test]
fn a_node_refuses_to_start_with_an_unauthenticated_raft_port_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut command = Server::command("127.0.0.1:0", &dir.path().join("db"), extra);
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let off_loopback = ["--node-id", "1", "--raft-listen", "192.0.2.1:7000"];
    let err = run(&off_loopback);
    assert!(err.contains("--allow-insecure-raft"), "{err}");

    // A certificate that names another node is refused at start too.
    let ca = Ca::new();
    let args = ca.server_args(dir.path(), 2);
    let mut extra: Vec<&str> = vec!["--node-id", "1", "--raft-listen", "127.0.0.1:0"];
    extra.extend(args.iter().map(String::as_str));
    let err = run(&extra);
    assert!(err.contains("must name this node as node-1"), "{err}");
}
