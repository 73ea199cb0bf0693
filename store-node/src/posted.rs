//! The common shape of a write request (`POST`): its JSON body and its `Idempotency-Key`,
//! fingerprinted with the request's method, path and body. Handlers take a [`Posted`] instead of
//! the raw headers and body, parse the body with [`Posted::json`], and hand the work to the
//! writer with [`Posted::idempotency`] (see `Writer::write`).

use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use bytes::Bytes;
use chainsync_replica::api::ApiError;
use serde::de::DeserializeOwned;

use crate::writer::Idempotency;

/// A write request's route (`"POST /api/v1/…"`, the path as sent), headers and body.
pub struct Posted {
    route: String,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Posted {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let route = format!("{} {}", request.method(), request.uri().path());
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status().as_u16();
                let code = if status == 413 {
                    "body_too_large"
                } else {
                    "invalid_body"
                };
                ApiError::new(status, code, rejection.body_text())
            })?;
        Ok(Posted {
            route,
            headers,
            body,
        })
    }
}

impl Posted {
    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.body)
    }

    /// The body as JSON; an empty (or blank) body means the defaults.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        self.json()
    }

    /// The request's `Idempotency-Key` (none: not repeat-safe), fingerprinted with its route
    /// and body so that the same key with another request is refused.
    pub fn idempotency(&self) -> Result<Option<Idempotency>, ApiError> {
        crate::http::idempotency(&self.headers, &self.route, &self.body)
    }
}

/// A request body as JSON (400 `invalid_json` with serde's reason otherwise).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}
