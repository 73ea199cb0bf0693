//! `Idempotency-Key` for the hub's writes that author an operation (a manual adjustment is a
//! money movement: a retried request must not adjust twice). The first answer is kept under the
//! key, fingerprinted with the request's method, path and body, in the same transaction as the
//! operation it answers; a repeat with the same key and request gets that answer again and
//! writes nothing; the same key with another request is refused (422 `idempotency_key_reused`).

use chainsync_replica::api::ApiError;
use chainsync_replica::posted::Idempotency;
use rusqlite::{Connection, OptionalExtension, params};

pub const schema_v1: &str = r#"
CREATE TABLE hub_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The answer kept under this key, if the request was answered before; 422
/// `idempotency_key_reused` when the key came with another request.
pub fn recall(
    conn: &Connection,
    keyed: &Idempotency,
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
    keyed: &Idempotency,
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
