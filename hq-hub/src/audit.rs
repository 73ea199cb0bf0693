//! The audit log: every export and every manual adjustment, with who, when and what.
//! Rows are only ever added; admins (and auditors) read them.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::users::User;

/// Most audit rows one request returns.
pub const audit_rows_max: usize = 1_000;

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix ms.
    pub at_ms: u64,
    pub user: String,
    pub role: String,
    /// `export` or `adjustment`.
    pub action: String,
    /// What was exported (the route and query) or adjusted (the member id).
    pub subject: String,
    /// JSON text: the format and row count of an export; the account, amount, reason and
    /// ledger entry of an adjustment.
    pub detail: String,
}

pub fn record(
    conn: &Connection,
    user: &User,
    action: &str,
    subject: &str,
    detail: &serde_json::Value,
    now_ms: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at_ms, user_name, role, action, subject, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        now_ms as i64,
        user.name,
        user.role,
        action,
        subject,
        detail.to_string()
    ])?;
    Ok(())
}

/// A manual adjustment made at a store (a ledger entry of an adjustment kind from a store,
/// applied at the hub for the first time) goes into the log as the store's: user
/// `store:<id>`, role `store`, at the entry's time. HQ's own adjustments are logged with the
/// HQ user when they are made.
pub fn record_store_adjustment(
    conn: &Connection,
    entry: &chainsync_core::ledger::LedgerEntry,
) -> rusqlite::Result<()> {
    use chainsync_core::ledger::EntryKind;
    if !matches!(
        entry.kind,
        EntryKind::PointsAdjust | EntryKind::StoredValueAdjust
    ) || entry.origin == chainsync_core::StoreId::hub()
    {
        return Ok(());
    }
    let user = User {
        name: format!("store:{}", entry.origin),
        role: "store".into(),
        region: None,
    };
    let detail = serde_json::json!({
        "account": chainsync_replica::project::account_name(entry.account),
        "kind": entry.kind.as_str(),
        "amount": entry.amount,
        "reason": entry.reason,
        "entry_id": entry.id,
    });
    record(
        conn,
        &user,
        "adjustment",
        &entry.member_id.to_string(),
        &detail,
        entry.hlc.wall_ms,
    )
}

/// Newest first; `action` filters when given.
pub fn list(
    conn: &Connection,
    action: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, at_ms, user_name, role, action, subject, detail FROM audit_log
         WHERE ?1 IS NULL OR action = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = statement.query_map(
        params![action, limit.clamp(1, audit_rows_max) as i64],
        |row| {
            Ok(AuditEntry {
                id: row.get(0)?,
                at_ms: row.get::<_, i64>(1)?.max(0) as u64,
                user: row.get(2)?,
                role: row.get(3)?,
                action: row.get(4)?,
                subject: row.get(5)?,
                detail: row.get(6)?,
            })
        },
    )?;
    rows.collect()
}
