//! API users. A token is 32 random bytes shown once; only its SHA-256 is stored (tokens carry
//! full entropy, so a fast hash is enough; passwords, when they come, use a memory-hard hash).

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Cashier,
    Manager,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "cashier" => Some(Role::Cashier),
            "manager" => Some(Role::Manager),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cashier => "cashier",
            Role::Manager => "manager",
        }
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create a user; returns the token (the only time it exists in clear).
pub fn add_user(conn: &Connection, name: &str, role: Role, now_ms: u64) -> anyhow::Result<String> {
    if name.trim().is_empty() || name.chars().count() > 64 {
        anyhow::bail!("user name must be 1 to 64 characters");
    }
    let token = format!("cs_{}", hex::encode(crate::random_bytes::<32>()?));
    conn.execute(
        "INSERT INTO users (name, role, token_sha256, created_ms) VALUES (?1, ?2, ?3, ?4)",
        (
            name.trim(),
            role.as_str(),
            token_hash(&token),
            now_ms as i64,
        ),
    )?;
    Ok(token)
}

pub fn find_by_token(conn: &Connection, token: &str) -> rusqlite::Result<Option<User>> {
    conn.query_row(
        "SELECT id, name, role FROM users WHERE token_sha256 = ?1",
        [token_hash(token)],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        },
    )
    .optional()
    .map(|found| {
        found.and_then(|(id, name, role)| Role::parse(&role).map(|role| User { id, name, role }))
    })
}
