//! The auth token on the gRPC door: every `kvstore.v1.KeyValue` call carries
//! it in the metadata `authorization: Bearer TOKEN` when the server has one.
//!
//! The check is a tower layer in front of the service, so a call without the
//! token is refused from its headers, before its message is read: as on the
//! native door, an unauthenticated client cannot make the server take in a
//! large request. A missing token is refused at once; a wrong one only after
//! the same throttle as a failed native `Auth` (`crate::auth`), so guessing
//! is no faster through this door. Health checking and reflection need no
//! token: they show the service's state and schema, never data.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kvstore_client::ErrorCode;

use super::service::status;
use crate::auth::Auth;

/// The path prefix of the calls the token guards.
const GUARDED: &str = "/kvstore.v1.KeyValue/";

/// Wraps the gRPC routes in an [`Authenticated`] service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The routes, behind the token check.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Auth>,
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes
        // its place for the next one (tower's usual hand-over).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verdict = if request.uri().path().starts_with(GUARDED) {
            presented(&self.auth, request.headers())
        } else {
            Presented::Passed
        };
        let auth = self.auth.clone();
        Box::pin(async move {
            match verdict {
                Presented::Passed => inner.call(request).await,
                Presented::Missing => Ok(status(
                    ErrorCode::Unauthenticated,
                    "this server requires a token: send the metadata `authorization: Bearer TOKEN`",
                )
                .into_http()),
                Presented::Wrong => {
                    auth.throttle_failure(1).await;
                    Ok(status(ErrorCode::AuthFailed, "wrong token").into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
    fn without_a_server_token_every_call_passes() {
        let open = Auth::new(None);
        assert_eq!(presented(&open, &headers(None)), Presented::Passed);
        assert_eq!(
            presented(&open, &headers(Some("Bearer x"))),
            Presented::Passed
        );
    }
}
