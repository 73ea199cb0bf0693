//! The common shape of a write request (`POST`), for the store's and the hub's HTTP APIs: its
//! JSON body and its `Idempotency-Key`, fingerprinted with the request's method, path and body
//! (the same key with another request can then be refused). Handlers take a [`Posted`] instead
//! of the raw headers and body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// Longest `Idempotency-Key`.
pub const idempotency_key_chars_max: usize = 255;

/// An `Idempotency-Key` and a fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

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
    /// and body.
    pub fn idempotency(&self) -> Result<Option<Idempotency>, ApiError> {
        let Some(key) = idempotency_key(&self.headers)? else {
            return Ok(None);
        };
        let mut hasher = Sha256::new();
        hasher.update(self.route.as_bytes());
        hasher.update([0]);
        hasher.update(&self.body);
        Ok(Some(Idempotency {
            key,
            fingerprint: hex::encode(hasher.finalize()),
        }))
    }
}

/// The request's `Idempotency-Key` (1 to 255 visible characters), if it has one.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| !key.is_empty() && key.len() <= idempotency_key_chars_max)
        .map(|key| Some(key.to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })
}

/// A request body as JSON (400 `invalid_json` with serde's reason otherwise).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}
