//! A digest of the canonical replicated state: members (profile, merge), their balances and
//! points, products (with HQ's catalog fields and bundle components), and sales with their refunds. Two replicas that hold the same set of
//! operations have equal digests, whatever the order of arrival; different state gives a
//! different digest (up to SHA-256 collisions).
//!
//! Every ledger entry, coupon templates, coupons, their redemptions and HQ's allowance policy
//! are included. Stock and transfers are not: a store holds only its own (the hub relays them
//! only to the stores they concern), so they are hashed per scope (`crate::stock::scope_digests`). The membership
//! program's records are included (rules, count cards, refund lines, gifts, feedback,
//! referrals).

use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// Hex SHA-256 over the replicated state, read in one consistent snapshot (call it inside a
/// read transaction, or on a connection nobody writes through concurrently).
pub fn state_digest(conn: &Connection) -> rusqlite::Result<String> {
    let mut hasher = Sha256::new();
    let mut feed = |section: &str, sql: &str, columns: usize| -> rusqlite::Result<()> {
        hasher.update(section.as_bytes());
        hasher.update([0u8]);
        let mut statement = conn.prepare(sql)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            for column in 0..columns {
                let value: rusqlite::types::Value = row.get(column)?;
                let text = match value {
                    rusqlite::types::Value::Null => "\u{1}null".to_owned(),
                    rusqlite::types::Value::Integer(v) => v.to_string(),
                    rusqlite::types::Value::Real(v) => v.to_string(),
                    rusqlite::types::Value::Text(v) => v,
                    rusqlite::types::Value::Blob(v) => hex::encode(v),
                };
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            hasher.update([0xffu8]);
        }
        Ok(())
    };
    feed(
        "members",
        "SELECT m.id, m.profile_json, m.merged_into, COALESCE(b.principal_fen, 0),
                COALESCE(b.bonus_fen, 0), COALESCE(b.points, 0)
         FROM members m LEFT JOIN member_balances b ON b.member_id = m.id ORDER BY m.id",
        6,
    )?;
    // Every entry, not a count and a sum: two different entries of the same amount must not
    // look converged.
    feed(
        "ledger",
        "SELECT id, member_id, kind, account, amount FROM ledger ORDER BY id",
        5,
    )?;
    feed(
        "coupon_templates",
        "SELECT id, name, value_fen, min_spend_fen, online_only FROM coupon_templates ORDER BY id",
        5,
    )?;
    feed(
        "coupons",
        "SELECT code, template_id, member_id FROM coupons ORDER BY code",
        3,
    )?;
    feed(
        "coupon_redemptions",
        "SELECT id, code FROM coupon_redemptions ORDER BY id",
        2,
    )?;
    feed(
        "allowance_policy",
        "SELECT version, body FROM allowance_policy",
        2,
    )?;
    feed(
        "products",
        "SELECT sku, name, price_fen, active, barcode, category, member_price_fen,
            (SELECT group_concat(b.component_sku || '*' || b.qty, ';' ORDER BY b.component_sku)
             FROM bundle_components b WHERE b.bundle_sku = products.sku)
         FROM products ORDER BY sku",
        8,
    )?;
    feed(
        "sales",
        "SELECT id, member_id, total_fen, refunded_fen FROM sales ORDER BY id",
        4,
    )?;
    feed(
        "rules",
        "SELECT version, body FROM rules_config ORDER BY id",
        2,
    )?;
    feed(
        "sale_points",
        "SELECT sale_id, rule_version, lines_json FROM sale_points ORDER BY sale_id",
        3,
    )?;
    feed(
        "count_card_templates",
        "SELECT id, name, service, uses, price_fen, validity_days, active
         FROM count_card_templates ORDER BY id",
        7,
    )?;
    feed(
        "count_cards",
        "SELECT c.id, c.member_id, c.uses, c.price_fen, c.expires_ms,
            (SELECT COUNT(*) FROM count_card_uses u WHERE u.card_id = c.id),
            (SELECT COUNT(DISTINCT r.use_id) FROM count_card_use_reversals r
             WHERE r.card_id = c.id)
         FROM count_cards c ORDER BY c.id",
        7,
    )?;
    feed(
        "refund_lines",
        "SELECT sale_id, line, SUM(qty) FROM refund_lines GROUP BY sale_id, line
         ORDER BY sale_id, line",
        3,
    )?;
    feed(
        "gifts",
        "SELECT g.id, g.name, g.points_price, g.stock, g.active,
            (SELECT COUNT(*) || ':' || COALESCE(SUM(r.qty), 0) FROM gift_redemptions r
             WHERE r.gift_id = g.id)
         FROM gifts g ORDER BY g.id",
        6,
    )?;
    feed(
        "feedback",
        "SELECT id, member_id, rating, text, checkout_id FROM feedback ORDER BY id",
        5,
    )?;
    feed(
        "coupon_rules",
        "SELECT id, rules_json FROM coupon_templates ORDER BY id",
        2,
    )?;
    feed(
        "coupon_instances",
        "SELECT code, owner_id, channel, issued_ms, valid_from_ms, valid_until_ms, pool_store
         FROM coupons ORDER BY code",
        7,
    )?;
    feed(
        "coupon_transfers",
        "SELECT id, code, from_member, to_member, at_ms FROM coupon_transfers ORDER BY id",
        5,
    )?;
    feed("lotteries", "SELECT id, body FROM lotteries ORDER BY id", 2)?;
    feed(
        "lottery_draws",
        "SELECT id, lottery_id, member_id, day, prize, code FROM lottery_draws ORDER BY id",
        6,
    )?;
    feed(
        "referrals",
        "SELECT referee, referrer, at_ms, origin FROM referrals ORDER BY referee",
        4,
    )?;
    Ok(hex::encode(hasher.finalize()))
}

/// [`state_digest`] inside a read transaction, so concurrent writes cannot tear it.
pub fn snapshot_digest(conn: &Connection) -> rusqlite::Result<String> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let digest = state_digest(conn);
    let end = conn.execute_batch("COMMIT");
    let digest = digest?;
    end?;
    Ok(digest)
}

/// [`state_digest`] and the scope digests (`crate::stock::scope_digests`) of `stores` (None:
/// every store seen, as the hub lists them) in one read transaction.
pub fn snapshot_digest_and_scopes(
    conn: &Connection,
    stores: Option<&[String]>,
) -> rusqlite::Result<(String, std::collections::BTreeMap<String, String>)> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let result = state_digest(conn)
        .and_then(|digest| Ok((digest, crate::stock::scope_digests(conn, stores, &[])?)));
    let end = conn.execute_batch("COMMIT");
    let result = result?;
    end?;
    Ok(result)
}
