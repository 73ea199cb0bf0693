//! Engagement records of the replica: referrals (老带新, `OpV1::Referral`), a grow-only set
//! keyed by the referee's member id, and what a member's record shows of them (who referred
//! whom, rewarded or pending). Whether a referral is rewarded is read from the ledger: its
//! reward entries have ids derived from the referee's phone (`chainsync_core::referral`).

use chainsync_core::StoreId;
use chainsync_core::id::derived_id;
use chainsync_core::ledger::Account;
use chainsync_core::referral::{Party, Referral, reward_key};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Referrals: one row per referee member id.
pub const schema_v1: &str = r#"
CREATE TABLE referrals (
    referee TEXT PRIMARY KEY,
    referrer TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX referrals_referrer ON referrals (referrer);
"#;

/// A grow-only set by referee (only the store that registered the referee writes it).
pub fn project_referral(
    conn: &Connection,
    referral: &Referral,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO referrals (referee, referrer, at_ms, origin)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        referral.referee.to_string(),
        referral.referrer.to_string(),
        referral.at_ms.min(i64::MAX as u64) as i64,
        origin.as_str(),
    ])?;
    Ok(())
}

/// A referral as a member's record shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReferralView {
    /// The member who named the referrer at registration.
    pub referee_id: Uuid,
    pub referee_name: String,
    /// The member who referred them (canonical id).
    pub referrer_id: Uuid,
    pub referrer_name: String,
    /// `rewarded` (the reward entries are in the ledger: after the referee's first purchase)
    /// or `pending`.
    pub status: String,
    /// The store where the referee registered.
    pub store_id: String,
    pub created_ms: u64,
}

/// The member a member id stands for now (itself, or the member it was merged into).
fn canonical(conn: &Connection, id: &str) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(
        "SELECT COALESCE(m.merged_into, m.id),
                (SELECT c.name FROM members c WHERE c.id = COALESCE(m.merged_into, m.id))
         FROM members m WHERE m.id = ?1",
    )?
    .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
    .optional()
}

/// The reward entry ids of the referral of the referee with this phone.
pub fn reward_entry_ids(referee_phone: &str) -> Vec<Uuid> {
    [Party::Referrer, Party::Referee]
        .into_iter()
        .flat_map(|party| {
            [Account::Points, Account::Bonus]
                .map(|account| derived_id(&reward_key(referee_phone, party, account)))
        })
        .collect()
}

/// Is the referral of the referee with this phone rewarded (any reward entry held)?
pub fn rewarded(conn: &Connection, referee_phone: &str) -> rusqlite::Result<bool> {
    let mut statement = conn.prepare_cached("SELECT 1 FROM ledger WHERE id = ?1")?;
    for id in reward_entry_ids(referee_phone) {
        if statement.exists([id.to_string()])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The referral that counts for a member's group (the canonical member and those merged into
/// it): the earliest by (time, referee id), so every replica picks the same one.
pub fn group_referral(conn: &Connection, canonical_id: Uuid) -> rusqlite::Result<Option<Referral>> {
    let row: Option<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT referee, referrer, at_ms FROM referrals
             WHERE referee IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
             ORDER BY at_ms, referee LIMIT 1",
        )?
        .query_row([canonical_id.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    Ok(row.and_then(|(referee, referrer, at_ms)| {
        Some(Referral {
            referee: Uuid::parse_str(&referee).ok()?,
            referrer: Uuid::parse_str(&referrer).ok()?,
            at_ms: at_ms.max(0) as u64,
        })
    }))
}

fn view(
    conn: &Connection,
    referee: &str,
    referrer: &str,
    at_ms: i64,
    origin: String,
) -> rusqlite::Result<Option<ReferralView>> {
    let (Some((referee_id, referee_name)), Some((referrer_id, referrer_name))) =
        (canonical(conn, referee)?, canonical(conn, referrer)?)
    else {
        return Ok(None);
    };
    let phone: Option<String> = conn
        .prepare_cached("SELECT phone FROM members WHERE id = ?1")?
        .query_row([&referee_id], |row| row.get(0))
        .optional()?;
    let status = match phone {
        Some(phone) if rewarded(conn, &phone)? => "rewarded",
        _ => "pending",
    };
    let (Ok(referee_id), Ok(referrer_id)) =
        (Uuid::parse_str(&referee_id), Uuid::parse_str(&referrer_id))
    else {
        return Ok(None);
    };
    Ok(Some(ReferralView {
        referee_id,
        referee_name,
        referrer_id,
        referrer_name,
        status: status.to_owned(),
        store_id: origin,
        created_ms: at_ms.max(0) as u64,
    }))
}

/// Most referrals one member's record lists.
pub const referrals_shown_max: usize = 100;

/// Who referred the member's group (None if nobody), and whom the group referred (one entry
/// per referred member group, oldest first).
pub fn member_referrals(
    conn: &Connection,
    canonical_id: Uuid,
) -> rusqlite::Result<(Option<ReferralView>, Vec<ReferralView>)> {
    let referred_by = match group_referral(conn, canonical_id)? {
        Some(referral) => {
            let origin: String = conn
                .prepare_cached("SELECT origin FROM referrals WHERE referee = ?1")?
                .query_row([referral.referee.to_string()], |row| row.get(0))?;
            view(
                conn,
                &referral.referee.to_string(),
                &referral.referrer.to_string(),
                referral.at_ms as i64,
                origin,
            )?
        }
        None => None,
    };
    let mut statement = conn.prepare_cached(
        "SELECT referee, referrer, at_ms, origin FROM referrals
         WHERE referrer IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
         ORDER BY at_ms, referee LIMIT ?2",
    )?;
    let rows = statement
        .query_map(
            params![canonical_id.to_string(), referrals_shown_max as i64],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                ))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut referrals: Vec<ReferralView> = Vec::new();
    for (referee, referrer, at_ms, origin) in rows {
        if let Some(found) = view(conn, &referee, &referrer, at_ms, origin)? {
            // A referee registered twice (merged) is listed once, as its group.
            if !referrals.iter().any(|r| r.referee_id == found.referee_id) {
                referrals.push(found);
            }
        }
    }
    Ok((referred_by, referrals))
}
