//! Server addresses: `host:port` or `kvstore://host:port`, and the default.

use crate::Error;

/// Where the server listens by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:65433";
/// The environment variable read when no address is given.
pub const ADDR_ENV: &str = "KVSTORE_ADDR";

/// Normalizes an address to `host:port`, accepting a `kvstore://` (or
/// `kvstores://`) prefix.
///
/// ```
/// use kvstore_client::addr::parse;
/// assert_eq!(parse("kvstore://db.local:7000").unwrap(), "db.local:7000");
/// assert_eq!(parse("127.0.0.1:65433").unwrap(), "127.0.0.1:65433");
/// assert!(parse("http://x:1").is_err());
/// ```
pub fn parse(addr: &str) -> Result<String, Error> {
    parse_target(addr).map(|(addr, _)| addr)
}

/// Like [`parse`], and also says whether the address asks for TLS
/// (`kvstores://host:port`).
///
/// ```
/// use kvstore_client::addr::parse_target;
/// assert_eq!(parse_target("kvstores://db.local:7000").unwrap(), ("db.local:7000".to_string(), true));
/// assert_eq!(parse_target("db.local:7000").unwrap(), ("db.local:7000".to_string(), false));
/// ```
pub fn parse_target(addr: &str) -> Result<(String, bool), Error> {
    let (rest, tls) = match addr.strip_prefix("kvstores://") {
        Some(rest) => (rest, true),
        None => (addr.strip_prefix("kvstore://").unwrap_or(addr), false),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let valid = match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
        }
        None => false,
    };
    if valid {
        Ok((rest.to_string(), tls))
    } else {
        Err(Error::InvalidAddress(addr.to_string()))
    }
}

/// The address from `KVSTORE_ADDR`, or [`DEFAULT_ADDR`].
pub fn from_env() -> Result<String, Error> {
    match std::env::var(ADDR_ENV) {
        Ok(addr) if !addr.is_empty() => parse(&addr),
        _ => Ok(DEFAULT_ADDR.to_string()),
    }
}
