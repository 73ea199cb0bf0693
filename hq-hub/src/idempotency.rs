//! `Idempotency-Key` for the hub's writes that author an operation (a manual adjustment is a
//! money movement: a retried request must not adjust twice). The first answer is kept under the
//! key, fingerprinted with the request's method, path and body, in the same transaction as the
//! operation it answers; a repeat with the same key and request gets that answer again and
//! writes nothing; the same key with another request is refused (422 `idempotency_key_reused`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use chainsync_replica::api::ApiError;
use rusqlite::{Connection, OptionalExtension, params};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub const schema_v1: &str = r#"
CREATE TABLE hub_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Longest `Idempotency-Key`.
pub const key_chars_max: usize = 255;

/// The request's `Idempotency-Key` (1 to 255 visible characters), if it has one.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= key_chars_max)
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })
}

/// A key and the fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: String,
    pub fingerprint: String,
}

/// A write request: its route (`"POST /api/v1/…"`, the path as sent), key and body.
pub struct Posted {
    pub keyed: Option<Keyed>,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Posted {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let route = format!("{} {}", request.method(), request.uri().path());
        let key = key_of(request.headers())?;
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
        let keyed = key.map(|key| {
            let mut hasher = Sha256::new();
            hasher.update(route.as_bytes());
            hasher.update([0]);
            hasher.update(&body);
            Keyed {
                key,
                fingerprint: hex::encode(hasher.finalize()),
            }
        });
        Ok(Posted { keyed, body })
    }
}

impl Posted {
    /// The body as JSON (400 `invalid_json` otherwise).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
    }
}

/// The answer kept under this key, if the request was answered before; 422
/// `idempotency_key_reused` when the key came with another request.
pub fn recall(
    conn: &Connection,
    keyed: &Keyed,
) -> Result<Option<(u16, serde_json::Value)>, ApiError> {
    let kept: Option<(String, u16, String)> = conn
        .prepare_cached("SELECT fingerprint, status, body FROM hub_idempotency WHERE key = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([&keyed.key], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(ApiError::internal)?;
    let Some((fingerprint, status, body)) = kept else {
        return Ok(None);
    };
    if fingerprint != keyed.fingerprint {
        return Err(ApiError::new(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        ));
    }
    let body = serde_json::from_str(&body).map_err(ApiError::internal)?;
    Ok(Some((status, body)))
}

/// Keep the answer under the key (call inside the transaction that writes what it answers).
pub fn remember(
    conn: &Connection,
    keyed: &Keyed,
    status: u16,
    body: &serde_json::Value,
    now_ms: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO hub_idempotency (key, fingerprint, status, body, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        keyed.key,
        keyed.fingerprint,
        status,
        body.to_string(),
        now_ms as i64
    ])?;
    Ok(())
}
