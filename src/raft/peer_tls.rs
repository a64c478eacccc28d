//! Mutual TLS on the raft port (`--raft-tls-cert`, `--raft-tls-key`,
//! `--raft-tls-ca`). Every node presents a certificate signed by the
//! cluster's CA whose subject alternative names include the DNS name
//! `node-ID`, its node id. A dialing node checks that the peer it reached is
//! the node it meant to reach (the server name `node-TARGET`); an accepting
//! node learns the peer's id from its certificate, refuses ids that are not
//! in the membership, and then refuses any message whose sender is another
//! node. All of it happens before a raft message is decoded or, for the
//! sender check, handed to openraft.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::error::Error;

/// How long a peer may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The paths of a node's raft TLS material.
#[derive(Debug, Clone)]
pub struct PeerTlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

/// Both ends of the raft port's TLS, for one node.
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// The DNS name a node's certificate carries.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

impl PeerTls {
    /// Loads the material of node `id`, whose certificate must name it.
    pub fn load(files: &PeerTlsFiles, id: u64) -> Result<PeerTls, Error> {
        let certs = crate::tls::certificates(&files.cert)?;
        let key = crate::tls::private_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in crate::tls::certificates(&files.ca)? {
            roots
                .add(ca)
                .map_err(|e| Error::Config(format!("{}: {e}", files.ca.display())))?;
        }
        if identity(&certs[0]) != Some(id) {
            return Err(Error::Config(format!(
                "the certificate in {} must name this node as {} (a DNS subject alternative name), and no other node",
                files.cert.display(),
                node_name(id)
            )));
        }
        let tls_error = |e: tokio_rustls::rustls::Error| Error::Config(format!("raft TLS: {e}"));
        let roots = Arc::new(roots);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::tls::provider())
                .build()
                .map_err(|e| Error::Config(format!("raft TLS: {e}")))?;
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(tls_error)?;
        let client = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(tls_error)?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of the handshake: the stream and the peer's node id.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(server::TlsStream<TcpStream>, u64)> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        let peer = (stream.get_ref().1.peer_certificates())
            .and_then(|certs| certs.first())
            .and_then(identity)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the peer's certificate names no node (node-ID)",
                )
            })?;
        Ok((stream, peer))
    }

    /// The client side of the handshake with node `target`, whose
    /// certificate must name it.
    pub async fn connect(
        &self,
        stream: TcpStream,
        target: u64,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_name(target)).map_err(std::io::Error::other)?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// The node id a (chain-verified) certificate is valid for: the one
/// `node-ID` among its DNS names, confirmed by webpki's own name check.
/// None if it names no node or several.
fn identity(cert: &CertificateDer<'_>) -> Option<u64> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut ids = (cert.valid_dns_names())
        .filter_map(|name| name.strip_prefix("node-")?.parse::<u64>().ok())
        .filter(|id| {
            ServerName::try_from(node_name(*id))
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
    let id = ids.next()?;
    ids.all(|other| other == id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// Node `id`'s files, its certificate signed by `ca`, under `dir`.
    fn files(
        dir: &std::path::Path,
        ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
        ca_pem: &str,
        id: u64,
    ) -> PeerTlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![node_name(id)]).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let files = PeerTlsFiles {
            cert: dir.join(format!("{id}.pem")),
            key: dir.join(format!("{id}.key")),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.ca, ca_pem).unwrap();
        files
    }

    #[tokio::test]
    async fn a_dialing_node_accepts_only_the_node_it_meant_to_reach() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        let ca = rcgen::Issuer::new(params, ca_key);
        let one = PeerTls::load(&files(dir.path(), &ca, &ca_pem, 1), 1).unwrap();
        let two = PeerTls::load(&files(dir.path(), &ca, &ca_pem, 2), 2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut peers = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                peers.push(two.accept(stream).await.map(|(_, id)| id).ok());
            }
            peers
        });
        // Node 1 dials what it believes is node 3 and reaches node 2.
        let stream = TcpStream::connect(addr).await.unwrap();
        assert!(one.connect(stream, 3).await.is_err());
        let stream = TcpStream::connect(addr).await.unwrap();
        let _kept = one.connect(stream, 2).await.unwrap();
        assert_eq!(server.await.unwrap(), vec![None, Some(1)]);
    }

    #[test]
    fn a_certificate_names_one_node_or_none() {
        assert_eq!(identity(&cert_for(&["node-3"])), Some(3));
        assert_eq!(identity(&cert_for(&["db1.example", "node-12"])), Some(12));
        assert_eq!(identity(&cert_for(&["db1.example"])), None);
        assert_eq!(identity(&cert_for(&["node-x", "nodes-4"])), None);
        assert_eq!(identity(&cert_for(&["node-1", "node-2"])), None);
    }
}
