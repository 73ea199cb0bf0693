//! The outbox: messages for the outside world (a webhook), written in the same transaction as
//! the event that causes them, and sent by a background task until the receiver takes them.
//!
//! Contract (see docs/store-api.md): each message is POSTed as JSON to the store's
//! `webhook_url` with the header `X-Chainsync-Message-Id: <id>`. The id is stable across
//! retries, so the receiver deduplicates by it: delivery is at least once. A 2xx answer marks
//! the message delivered; anything else (an error, a timeout, another status) is retried after
//! 1 s, doubling up to 5 minutes. Messages are kept in this store's database only (they are not
//! replicated): each store sends the messages of the events that happened at it.

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::writer::Writer;
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::read::ReadPool;

/// First retry delay.
pub const retry_first_ms: u64 = 1_000;
/// Longest retry delay.
pub const retry_max_ms: u64 = 5 * 60 * 1_000;
/// Most messages sent per round.
pub const send_batch_max: usize = 32;
/// How long one POST may take.
pub const post_timeout: Duration = Duration::from_secs(10);
/// Longest idle wait before looking at the table again.
pub const idle_wait: Duration = Duration::from_millis(500);
/// Most messages one listing returns.
pub const list_limit_max: usize = 500;

/// The schema (a store-node migration).
pub const schema_v1: &str = r#"
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    member_id TEXT,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    last_error TEXT
) WITHOUT ROWID;
CREATE INDEX outbox_pending ON outbox (next_attempt_ms) WHERE delivered_ms IS NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_ms) WHERE delivered_ms IS NOT NULL;
"#;

/// Delay before retry number `attempts` (1 = after the first failure): 1 s doubling, at most
/// 5 minutes.
pub fn retry_delay_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(20);
    retry_first_ms
        .saturating_mul(1u64 << doublings)
        .min(retry_max_ms)
}

/// Queue a message inside the caller's transaction. A message whose id is already queued is
/// left as it is (ids like `birthday:<member>:<year>` make a message once-only). Returns whether
/// it was new.
pub fn enqueue(
    conn: &Connection,
    id: &str,
    kind: &str,
    member_id: Option<Uuid>,
    data: &Value,
    now_ms: u64,
) -> Result<bool, ApiError> {
    let body = serde_json::to_string(data).map_err(ApiError::internal)?;
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO outbox (id, kind, member_id, body, created_ms, next_attempt_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute((
            id,
            kind,
            member_id.map(|m| m.to_string()),
            body,
            now_ms as i64,
        ))?;
    Ok(inserted == 1)
}

/// One message as stored, and as listed by `GET /api/v1/outbox`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxMessage {
    pub id: String,
    /// e.g. `member_registered`, `checkout`, `recharge`, `check_in`, `birthday_greeting`.
    pub kind: String,
    pub member_id: Option<String>,
    /// The message's data (what the webhook receives under `data`).
    #[schema(value_type = Object)]
    pub body: Value,
    pub created_ms: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    /// Unix ms of the 2xx answer; null while pending.
    pub delivered_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// What the webhook receives.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookPayload<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub store_id: &'a str,
    pub member_id: Option<&'a str>,
    pub created_ms: i64,
    #[schema(value_type = Object)]
    pub data: &'a Value,
}

fn message_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxMessage> {
    let body: String = row.get(3)?;
    Ok(OutboxMessage {
        id: row.get(0)?,
        kind: row.get(1)?,
        member_id: row.get(2)?,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        created_ms: row.get(4)?,
        attempts: row.get(5)?,
        next_attempt_ms: row.get(6)?,
        delivered_ms: row.get(7)?,
        last_error: row.get(8)?,
    })
}

const columns: &str =
    "id, kind, member_id, body, created_ms, attempts, next_attempt_ms, delivered_ms, last_error";

/// Pending messages due at `now_ms`, oldest first.
pub fn due(conn: &Connection, now_ms: u64, limit: usize) -> rusqlite::Result<Vec<OutboxMessage>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {columns} FROM outbox WHERE delivered_ms IS NULL AND next_attempt_ms <= ?1
         ORDER BY next_attempt_ms, created_ms, id LIMIT ?2"
    ))?;
    let rows = statement.query_map((now_ms as i64, limit as i64), message_of)?;
    rows.collect()
}

/// When the next pending message is due (None: nothing pending).
pub fn next_due_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_attempt_ms) FROM outbox WHERE delivered_ms IS NULL",
        [],
        |row| row.get(0),
    )
}

/// Messages by status (`pending` oldest first, `delivered` newest first).
pub fn list(
    conn: &Connection,
    delivered: bool,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxMessage>> {
    let sql = if delivered {
        format!(
            "SELECT {columns} FROM outbox WHERE delivered_ms IS NOT NULL
             ORDER BY delivered_ms DESC, id LIMIT ?1"
        )
    } else {
        format!(
            "SELECT {columns} FROM outbox WHERE delivered_ms IS NULL
             ORDER BY created_ms, id LIMIT ?1"
        )
    };
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map([limit as i64], message_of)?;
    rows.collect()
}

/// Record a 2xx answer.
pub fn mark_delivered(conn: &Connection, id: &str, now_ms: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE outbox SET delivered_ms = ?2, attempts = attempts + 1, last_error = NULL
         WHERE id = ?1 AND delivered_ms IS NULL",
        (id, now_ms as i64),
    )?;
    Ok(())
}

/// Record a failed attempt and schedule the next one.
pub fn mark_failed(conn: &Connection, id: &str, error: &str, now_ms: u64) -> rusqlite::Result<()> {
    let attempts: Option<i64> = conn
        .query_row(
            "SELECT attempts FROM outbox WHERE id = ?1 AND delivered_ms IS NULL",
            [id],
            |row| row.get(0),
        )
        .optional()?;
    let Some(attempts) = attempts else {
        return Ok(());
    };
    let attempts = attempts.saturating_add(1);
    let delay = retry_delay_ms(u32::try_from(attempts).unwrap_or(u32::MAX));
    let error: String = error.chars().take(300).collect();
    conn.execute(
        "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4 WHERE id = ?1",
        (id, attempts, now_ms.saturating_add(delay) as i64, error),
    )?;
    Ok(())
}

/// POST one message. Ok after a 2xx; Err with a short reason otherwise.
fn post(
    agent: &ureq::Agent,
    url: &str,
    store_id: &str,
    message: &OutboxMessage,
) -> Result<(), String> {
    let payload = WebhookPayload {
        id: &message.id,
        kind: &message.kind,
        store_id,
        member_id: message.member_id.as_deref(),
        created_ms: message.created_ms,
        data: &message.body,
    };
    let text = serde_json::to_string(&payload).map_err(|e| e.to_string())?;
    let response = agent
        .post(url)
        .header("X-Chainsync-Message-Id", message.id.as_str())
        .content_type("application/json")
        .send(text)
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {}", status.as_u16()))
    }
}

/// The sender: runs until `stop` turns true.
pub struct Sender {
    pub url: String,
    pub store_id: String,
    pub reads: Arc<ReadPool>,
    pub writer: Writer,
}

impl Sender {
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(post_timeout))
            .proxy(None)
            .build();
        let agent = ureq::Agent::new_with_config(config);
        let mut own_seq = self.writer.own_seq();
        tracing::info!(url = %self.url, "outbox sender started");
        loop {
            if *stop.borrow() {
                break;
            }
            let now = crate::now_ms();
            let batch = match self
                .reads
                .run(move |conn| Ok(due(conn, now, send_batch_max)?))
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e.message, "outbox: cannot read pending messages");
                    Vec::new()
                }
            };
            for message in &batch {
                let (agent, url, store_id, sent) = (
                    agent.clone(),
                    self.url.clone(),
                    self.store_id.clone(),
                    message.clone(),
                );
                let result =
                    tokio::task::spawn_blocking(move || post(&agent, &url, &store_id, &sent))
                        .await
                        .unwrap_or_else(|e| Err(format!("sender task failed: {e}")));
                let id = message.id.clone();
                if let Err(error) = &result {
                    tracing::debug!(id = %id, %error, "outbox: delivery failed");
                }
                let recorded = self
                    .writer
                    .submit_background(Box::new(move |conn, _local, now| {
                        match &result {
                            Ok(()) => mark_delivered(conn, &id, now)?,
                            Err(error) => mark_failed(conn, &id, error, now)?,
                        }
                        Reply::new(200, &())
                    }))
                    .await;
                if let Err(e) = recorded {
                    tracing::warn!(error = %e.message, "outbox: cannot record an attempt");
                }
            }
            if batch.len() == send_batch_max {
                continue;
            }
            let next = self
                .reads
                .run(|conn| Ok(next_due_ms(conn)?))
                .await
                .ok()
                .flatten();
            let now = crate::now_ms() as i64;
            let wait = match next {
                Some(at) if at <= now => continue,
                Some(at) => Duration::from_millis((at - now) as u64).min(idle_wait),
                None => idle_wait,
            };
            // New local operations (a sale, a registration…) usually come with a message.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = own_seq.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_five_minutes() {
        assert_eq!(retry_delay_ms(0), 1_000);
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(3), 4_000);
        assert_eq!(retry_delay_ms(9), 256_000);
        assert_eq!(retry_delay_ms(10), retry_max_ms);
        assert_eq!(retry_delay_ms(u32::MAX), retry_max_ms);
    }

    #[test]
    fn enqueue_once_then_deliver() -> anyhow::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(schema_v1)?;
        let data = serde_json::json!({"x": 1});
        let queue = |now| enqueue(&conn, "a", "test", None, &data, now).map_err(|e| e.message);
        assert_eq!(queue(10), Ok(true));
        assert_eq!(queue(20), Ok(false));
        assert_eq!(due(&conn, 9, 10)?.len(), 0);
        assert_eq!(due(&conn, 10, 10)?.len(), 1);
        mark_failed(&conn, "a", "boom", 100)?;
        assert_eq!(due(&conn, 1_099, 10)?.len(), 0);
        assert_eq!(due(&conn, 1_100, 10)?.len(), 1);
        mark_failed(&conn, "a", "boom", 1_100)?;
        assert_eq!(next_due_ms(&conn)?, Some(3_100));
        mark_delivered(&conn, "a", 3_200)?;
        assert_eq!(next_due_ms(&conn)?, None);
        let delivered = list(&conn, true, 10)?;
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].attempts, 3);
        assert_eq!(delivered[0].delivered_ms, Some(3_200));
        assert!(list(&conn, false, 10)?.is_empty());
        Ok(())
    }
}
