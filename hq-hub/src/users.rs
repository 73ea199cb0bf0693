//! HQ users: roles, API tokens, passwords and login sessions.
//!
//! Tokens (from `user add`) and session tokens (from login) are 32 random bytes; only their
//! SHA-256 is stored. Passwords are stored as argon2id PHC strings. A regional manager carries
//! the region whose stores and members they may see.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

pub const roles: [&str; 4] = ["admin", "hq-ops", "regional-manager", "auditor"];

/// How long a login session lasts (12 hours).
pub const session_ttl_ms: u64 = 12 * 60 * 60 * 1000;

/// Longest password accepted (argon2 hashes anything; this bounds the work per login).
pub const password_chars_max: usize = 256;

/// Who is calling the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: String,
    /// The region of a regional manager (None for the other roles).
    pub region: Option<String>,
}

impl User {
    /// Admin and hq-ops change HQ configuration and make adjustments.
    pub fn may_write(&self) -> bool {
        self.role == "admin" || self.role == "hq-ops"
    }

    /// Full phone numbers are shown to admin and hq-ops; others see `138****1234`.
    pub fn sees_phones(&self) -> bool {
        self.may_write()
    }

    /// The region this user is limited to, if any.
    pub fn region_scope(&self) -> Option<&str> {
        if self.role == "regional-manager" {
            // A regional manager without a region sees nothing rather than everything.
            Some(self.region.as_deref().unwrap_or(""))
        } else {
            None
        }
    }
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("hq_{}", hex::encode(bytes)))
}

/// Hash a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

fn password_matches(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Add a user; returns its API token (shown once). `region` is required for (and only for)
/// regional managers; `password` enables login.
pub fn add_user_with(
    conn: &Connection,
    name: &str,
    role: &str,
    region: Option<&str>,
    password: Option<&str>,
    now_ms: u64,
) -> anyhow::Result<String> {
    if !roles.contains(&role) {
        anyhow::bail!("role must be one of {}", roles.join(", "));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        anyhow::bail!("user name must be 1 to 64 characters");
    }
    let region = region.map(str::trim).filter(|r| !r.is_empty());
    match (role, region) {
        ("regional-manager", None) => anyhow::bail!("a regional manager needs --region"),
        ("regional-manager", Some(r)) if r.chars().count() > 64 => {
            anyhow::bail!("--region must be 1 to 64 characters")
        }
        ("regional-manager", Some(_)) | (_, None) => {}
        (_, Some(_)) => anyhow::bail!("--region is only for regional managers"),
    }
    let taken: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM users WHERE name = ?1",
        [name],
        |row| row.get(0),
    )?;
    if taken {
        anyhow::bail!("a user named {name:?} exists already");
    }
    let password_hash = match password {
        Some(password) => {
            if password.is_empty() || password.chars().count() > password_chars_max {
                anyhow::bail!("password must be 1 to {password_chars_max} characters");
            }
            Some(hash_password(password)?)
        }
        None => None,
    };
    let token = new_token()?;
    conn.execute(
        "INSERT INTO users (name, role, token_sha256, created_ms, region, password_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        (
            name,
            role,
            token_hash(&token),
            now_ms as i64,
            region,
            password_hash,
        ),
    )?;
    Ok(token)
}

/// Add a user without region or password (the original form).
pub fn add_user(conn: &Connection, name: &str, role: &str, now_ms: u64) -> anyhow::Result<String> {
    add_user_with(conn, name, role, None, None, now_ms)
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: row.get(0)?,
        role: row.get(1)?,
        region: row.get(2)?,
    })
}

/// The user behind an API token or a live session token.
pub fn find_by_token(
    conn: &Connection,
    token: &str,
    now_ms: u64,
) -> rusqlite::Result<Option<User>> {
    let hash = token_hash(token);
    let by_token = conn
        .prepare_cached("SELECT name, role, region FROM users WHERE token_sha256 = ?1")?
        .query_row([&hash], user_from_row)
        .optional()?;
    if by_token.is_some() {
        return Ok(by_token);
    }
    conn.prepare_cached(
        "SELECT u.name, u.role, u.region FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_sha256 = ?1 AND s.expires_ms > ?2",
    )?
    .query_row((&hash, now_ms as i64), user_from_row)
    .optional()
}

/// Check a name and password; on success open a session and return its token and expiry.
pub fn login(
    conn: &Connection,
    name: &str,
    password: &str,
    now_ms: u64,
) -> anyhow::Result<Option<(String, u64, User)>> {
    match check_password(conn, name, password)? {
        Some((id, user)) => {
            let (token, expires_ms) = open_session(conn, id, now_ms)?;
            Ok(Some((token, expires_ms, user)))
        }
        None => Ok(None),
    }
}

/// The user id and user if the password is right (argon2: slow on purpose; run it on a
/// reader, not while holding the writer).
pub fn check_password(
    conn: &Connection,
    name: &str,
    password: &str,
) -> anyhow::Result<Option<(i64, User)>> {
    if password.chars().count() > password_chars_max {
        return Ok(None);
    }
    let found: Option<(i64, Option<String>, User)> = conn
        .query_row(
            "SELECT id, password_hash, name, role, region FROM users WHERE name = ?1",
            [name.trim()],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    User {
                        name: row.get(2)?,
                        role: row.get(3)?,
                        region: row.get(4)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((id, Some(stored), user)) = found else {
        // Spend about the same time as a real check, so names cannot be probed by timing.
        let _ = password_matches(DUMMY_HASH, password);
        return Ok(None);
    };
    if !password_matches(&stored, password) {
        return Ok(None);
    }
    Ok(Some((id, user)))
}

/// Open a login session for a user; returns its token and expiry.
pub fn open_session(conn: &Connection, id: i64, now_ms: u64) -> anyhow::Result<(String, u64)> {
    let token = new_token()?;
    let expires_ms = now_ms.saturating_add(session_ttl_ms);
    conn.execute(
        "DELETE FROM sessions WHERE expires_ms <= ?1",
        [now_ms as i64],
    )?;
    conn.execute(
        "INSERT INTO sessions (token_sha256, user_id, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4)",
        (token_hash(&token), id, now_ms as i64, expires_ms as i64),
    )?;
    Ok((token, expires_ms))
}

/// argon2id of a throwaway password: verified against when a name is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3ZpPqZGbSE1XmSggBO7iTAoLZyYDV1xTZkeXu1uEVYY";

/// `138****1234`: the first three and last four digits of a phone.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_masked_in_the_middle() {
        assert_eq!(mask_phone("13812341234"), "138****1234");
        assert_eq!(mask_phone("123"), "***");
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(password_matches(&hash, "s3cret"));
        assert!(!password_matches(&hash, "s3cret "));
        assert!(!password_matches("garbage", "s3cret"));
    }
}
