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

/// The kept answer to a repeated request (read before the request is checked again, so a
/// repeat gets the first answer even when what it named has changed since).
pub async fn recalled(
    hub: &crate::http::HubState,
    keyed: &Option<Idempotency>,
) -> Result<Option<axum::response::Response>, ApiError> {
    let Some(keyed) = keyed.clone() else {
        return Ok(None);
    };
    let kept = hub.reads.run(move |conn| recall(conn, &keyed)).await?;
    Ok(kept.map(|(status, answer)| answered(status, answer)))
}

/// Author `op` as HQ and answer 201 with what `view` reads back in the same transaction,
/// keeping that answer under the request's key (if it has one). A repeat that raced the
/// first one past [`recalled`] gets the first answer here, under the writer lock.
pub async fn author_answered(
    hub: &crate::http::HubState,
    keyed: Option<Idempotency>,
    op: chainsync_core::op::OpV1,
    view: impl FnOnce(&Connection) -> Result<serde_json::Value, crate::storage::HubStorageError>
    + Send
    + 'static,
) -> Result<axum::response::Response, ApiError> {
    let writer = hub.writer.clone();
    let (head, status, answer) = tokio::task::spawn_blocking(move || {
        let mut conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        if let Some(keyed) = &keyed
            && let Some((status, answer)) = recall(&conn, keyed)?
        {
            return Ok::<_, ApiError>((None, status, answer));
        }
        let mut answer = serde_json::Value::Null;
        let now = crate::now_ms();
        let (head, _) = crate::storage::author_with(
            &mut conn,
            now,
            |_, _| Ok(op),
            |tx, _| {
                answer = view(tx)?;
                if let Some(keyed) = &keyed {
                    remember(tx, keyed, 201, &answer, now)?;
                }
                Ok(())
            },
        )
        .map_err(ApiError::internal)?;
        Ok((Some(head), 201, answer))
    })
    .await
    .map_err(ApiError::internal)??;
    if let Some(head) = head {
        hub.log_grew.send_replace(head);
    }
    Ok(answered(status, answer))
}

/// A kept or new answer as the response it was (`status` as kept with it).
pub fn answered(status: u16, answer: serde_json::Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
    (status, axum::Json(answer)).into_response()
}

/// What a read-back view becomes in an answer.
pub fn as_answer<T: serde::Serialize>(
    view: Option<T>,
    what: &str,
) -> Result<serde_json::Value, crate::storage::HubStorageError> {
    let view = view.ok_or_else(|| {
        crate::storage::HubStorageError::Damaged(format!("{what} written but not found"))
    })?;
    serde_json::to_value(&view).map_err(|e| crate::storage::HubStorageError::Damaged(e.to_string()))
}
