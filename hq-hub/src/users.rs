//! HQ users and their API tokens (only SHA-256 hashes are stored; tokens are 32 random bytes).

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

pub const roles: [&str; 4] = ["admin", "hq-ops", "regional-manager", "auditor"];

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn add_user(conn: &Connection, name: &str, role: &str, now_ms: u64) -> anyhow::Result<String> {
    if !roles.contains(&role) {
        anyhow::bail!("role must be one of {}", roles.join(", "));
    }
    if name.trim().is_empty() || name.chars().count() > 64 {
        anyhow::bail!("user name must be 1 to 64 characters");
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("hq_{}", hex::encode(bytes));
    conn.execute(
        "INSERT INTO users (name, role, token_sha256, created_ms) VALUES (?1, ?2, ?3, ?4)",
        (name.trim(), role, token_hash(&token), now_ms as i64),
    )?;
    Ok(token)
}

pub fn find_by_token(conn: &Connection, token: &str) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT name, role FROM users WHERE token_sha256 = ?1",
        [token_hash(token)],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
}
