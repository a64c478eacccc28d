//! What a `kvstore.v1.KeyValue` call must pass before tonic decodes it: the
//! auth token, and a whole request message that has really arrived.
//!
//! **The token.** With a token configured, every call carries it in the
//! metadata `authorization: Bearer TOKEN`. It is checked from the call's
//! headers, before its message is read: as on the native door, a client
//! without the token cannot make the server take in a large request. A
//! missing token is refused at once; a wrong one only after the same
//! throttle as a failed native `Auth` (`crate::session::login`): one connection's
//! failures are answered one after another with a doubling pause, and the
//! connection is closed after [`crate::auth::MAX_FAILURES`] of them, or after
//! [`crate::auth::MAX_UNAUTHENTICATED_COMMANDS`] calls without a token, so guessing
//! is no faster through this door. A connection that has had no call pass
//! with the token within [`crate::auth::LOGIN_TIMEOUT`] is closed (`super::Conn`).
//! Health checking and reflection need no token: they show the service's
//! state and schema, never data.
//!
//! **The message.** tonic reserves a message's claimed length as soon as it
//! has read the 5-byte gRPC prefix. So the gate reads the request body first,
//! growing with the bytes that arrive, at most `--max-frame` of them and
//! within `--read-timeout-ms`, checks that it is exactly one message of the
//! length its prefix claims, and only then hands it to tonic. Every method
//! takes one request message (only replies stream), so nothing is lost by
//! reading it whole. A `BulkPut`'s pairs are counted in the encoded message,
//! before decoding turns each (two bytes at least on the wire) into a pair
//! of 64 bytes in memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use kvstore_client::ErrorCode;
use tonic::body::Body;
use tonic::Status;

use super::service::status;
use super::ConnInfo;
use crate::auth::Auth;
use crate::session::login::Attempt;

/// The path prefix of the calls the gate guards.
const GUARDED: &str = "/kvstore.v1.KeyValue/";
/// The method whose items are counted before decoding.
const BULK_PUT: &str = "/kvstore.v1.KeyValue/BulkPut";
/// A gRPC message's prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

/// Wraps the gRPC routes in a [`Gated`] service.
#[derive(Clone)]
pub struct Gate {
    /// The token, and the server-wide spacing of failures.
    auth: Arc<Auth>,
    /// `--max-bulk-items`: pairs a `BulkPut` may carry.
    max_bulk_items: usize,
    /// The largest request message (`--max-frame`).
    max_message: usize,
    /// How long a request's body may take to arrive (`--read-timeout-ms`;
    /// `None`: no limit).
    read_timeout: Option<Duration>,
}

impl Gate {
    pub fn new(
        auth: Arc<Auth>,
        max_message: usize,
        max_bulk_items: usize,
        read_timeout: Option<Duration>,
    ) -> Gate {
        Gate {
            auth,
            max_bulk_items,
            max_message,
            read_timeout,
        }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// The routes, behind the gate.
#[derive(Clone)]
pub struct Gated<S> {
    /// The routes.
    inner: S,
    /// What calls must pass first.
    gate: Gate,
}

/// What a call's metadata says about its token.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// No token is needed, or the right one is there.
    Passed,
    /// No `authorization: Bearer ...` metadata.
    Missing,
    /// A token that is not the server's.
    Wrong,
}

fn presented(auth: &Auth, headers: &http::HeaderMap) -> Presented {
    if !auth.required() {
        return Presented::Passed;
    }
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Presented::Missing;
    };
    let token = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .unwrap_or_default();
    if auth.check(token) {
        Presented::Passed
    } else {
        Presented::Wrong
    }
}

/// Checks that `body` is exactly one gRPC message whose prefix claims the
/// length that follows it.
fn one_message(body: &[u8]) -> Result<(), Status> {
    let Some((prefix, message)) = body.split_first_chunk::<PREFIX>() else {
        return Err(Status::invalid_argument(format!(
            "a request of {} bytes is shorter than a gRPC message prefix",
            body.len()
        )));
    };
    let claimed = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if claimed != message.len() {
        return Err(Status::invalid_argument(format!(
            "the request message claims {claimed} bytes and {} followed; every method takes exactly one message",
            message.len()
        )));
    }
    Ok(())
}

impl Gate {
    /// The request with its body read whole and checked, or the status to
    /// answer instead.
    async fn admit(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        // Every connection tonic serves is a `super::Conn`, whose state
        // comes with each call.
        let conn = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.state.clone())
            .unwrap_or_default();
        match presented(&self.auth, request.headers()) {
            Presented::Passed => conn.admitted.store(true, Ordering::Release),
            Presented::Missing => {
                if conn.login.lock().await.refuse() {
                    conn.close();
                }
                return Err(status(
                    ErrorCode::Unauthenticated,
                    "this server requires a token: send the metadata `authorization: Bearer TOKEN`",
                ));
            }
            Presented::Wrong => {
                let mut login = conn.login.lock().await;
                if let Attempt::Failed { close: true } = login.attempt(&self.auth, false).await {
                    conn.close();
                }
                return Err(status(ErrorCode::AuthFailed, "wrong token"));
            }
        }
        let (parts, body) = request.into_parts();
        let limit = self.max_message + PREFIX;
        let read = Limited::new(body, limit).collect();
        let read = match self.read_timeout {
            Some(timeout) => tokio::time::timeout(timeout, read).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the request did not arrive within {} ms (--read-timeout-ms)",
                    timeout.as_millis()
                ))
            })?,
            None => read.await,
        };
        let body: Bytes = match read {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Status::out_of_range(format!(
                    "the request message is larger than the server's limit of {} bytes (--max-frame)",
                    self.max_message
                )))
            }
            Err(e) => return Err(Status::cancelled(format!("the request body failed: {e}"))),
        };
        one_message(&body)?;
        if parts.uri.path() == BULK_PUT {
            // Malformed messages are left for tonic to refuse.
            if let Some(pairs) = count_field(&body[PREFIX..], 1) {
                if pairs > self.max_bulk_items {
                    return Err(status(
                        ErrorCode::TooManyItems,
                        format!(
                            "BulkPut of {pairs} pairs exceeds the limit of {} pairs",
                            self.max_bulk_items
                        ),
                    ));
                }
            }
        }
        Ok(http::Request::from_parts(parts, Body::new(Full::new(body))))
    }
}

/// How many times field `number` occurs at the top level of the encoded
/// protobuf message `message`, without decoding it; `None` if it is not a
/// well-formed message.
fn count_field(mut message: &[u8], number: u64) -> Option<usize> {
    use prost::encoding::decode_varint;
    let mut count = 0;
    while !message.is_empty() {
        let key = decode_varint(&mut message).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut message).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(decode_varint(&mut message).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
        count += usize::from(key >> 3 == number);
    }
    Some(count)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Gated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes
        // its place for the next one (tower's usual hand-over).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            if !request.uri().path().starts_with(GUARDED) {
                return inner.call(request).await;
            }
            match gate.admit(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(value) = authorization {
            map.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_bearer_token_passes() {
        let auth = Auth::new(Some(Bytes::from_static(b"s3cret")));
        assert_eq!(presented(&auth, &headers(None)), Presented::Missing);
        assert_eq!(
            presented(&auth, &headers(Some("Bearer s3cret"))),
            Presented::Passed
        );
        for wrong in [
            "s3cret",
            "Bearer s3cre",
            "Bearer s3cret ",
            "bearer s3cret",
            "Basic s3cret",
        ] {
            assert_eq!(
                presented(&auth, &headers(Some(wrong))),
                Presented::Wrong,
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_request_is_exactly_one_message_of_its_claimed_length() {
        let message = |claimed: u32, body: &[u8]| {
            let mut bytes = vec![0];
            bytes.extend_from_slice(&claimed.to_be_bytes());
            bytes.extend_from_slice(body);
            bytes
        };
        assert!(one_message(&message(3, b"abc")).is_ok());
        assert!(one_message(&message(0, b"")).is_ok());
        for bad in [
            message(4, b"abc"),
            message(2, b"abc"),
            message(u32::MAX, b""),
            [message(1, b"a"), message(1, b"b")].concat(),
            vec![0, 0, 0],
            vec![],
        ] {
            let status = one_message(&bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn bulk_put_pairs_are_counted_without_decoding() {
        use kvstore_proto::v1::{BulkPutRequest, KeyValuePair};
        use prost::Message;
        for n in [0, 1, 7, 1000] {
            let request = BulkPutRequest {
                pairs: (0..n)
                    .map(|i| KeyValuePair {
                        key: Bytes::from(format!("k{i}")),
                        value: Bytes::from(vec![0; i % 300]),
                    })
                    .collect(),
            };
            assert_eq!(count_field(&request.encode_to_vec(), 1), Some(n));
        }
        // Empty pairs: two bytes each on the wire.
        assert_eq!(count_field(&[0x0a, 0x00].repeat(500), 1), Some(500));
        // Other fields are not counted; cut or malformed messages are None.
        assert_eq!(count_field(&[0x10, 0x05, 0x0a, 0x00], 1), Some(1));
        assert_eq!(count_field(&[0x0a, 0x05, 0x00], 1), None);
        assert_eq!(count_field(&[0x0b], 1), None);
        assert_eq!(count_field(&[0x80], 1), None);
    }

    #[test]
    fn without_a_server_token_every_call_passes() {
        let open = Auth::new(None);
        assert_eq!(presented(&open, &headers(None)), Presented::Passed);
        assert_eq!(
            presented(&open, &headers(Some("Bearer x"))),
            Presented::Passed
        );
    }
}
