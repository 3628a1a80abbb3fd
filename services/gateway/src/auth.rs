//! Authentication of public calls: `authorization: Bearer <key>` metadata
//! resolved through [`ApiKeys`] to a [`Tenant`], which handlers read from
//! the request extensions. A missing, malformed, unknown or revoked key is
//! UNAUTHENTICATED; Redis being down is UNAVAILABLE (retry), never a
//! silent pass.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use osa_runtime::ServiceError;
use tonic::{body::Body, server::NamedService};

use crate::keys::{ApiKeys, Tenant};

/// A service whose every call must carry a valid API key.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    keys: ApiKeys,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, keys: ApiKeys) -> Self {
        Self { inner, keys }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// The bearer token of `authorization` metadata, if well-formed.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The ready service handles this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        let token = bearer(req.headers()).map(str::to_owned);
        Box::pin(async move {
            let refused = |e: ServiceError| Ok(tonic::Status::from(e).into_http::<Body>());
            let Some(token) = token else {
                return refused(ServiceError::Unauthenticated(
                    "missing `authorization: Bearer <API key>` metadata".into(),
                ));
            };
            match keys.authenticate(&token).await {
                Ok(Some(tenant)) => {
                    req.extensions_mut().insert::<Tenant>(tenant);
                    inner.call(req).await
                }
                Ok(None) => {
                    refused(ServiceError::Unauthenticated("unknown or revoked API key".into()))
                }
                Err(e) => refused(ServiceError::Unavailable {
                    dependency: "redis",
                    detail: e.to_string(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer osa_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("osa_abc"));
        h.insert("authorization", "bearer  osa_abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("osa_abc"));
        h.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
