//! Last writer wins by (HLC, origin) for replicated rows that carry the columns
//! `hlc_wall_ms, hlc_counter, origin` (templates, gifts, lotteries). Order-independent: every
//! replica keeps the write with the greatest stamp, whatever order the writes arrive in, and a
//! repeat of the stored write changes nothing.

use chainsync_core::StoreId;
use chainsync_core::hlc::HlcTimestamp;
use rusqlite::{Connection, OptionalExtension};

/// A write's stamp as stored: (HLC wall ms, HLC counter, origin store).
pub type Stamp = (i64, i64, String);

pub fn stamp(hlc: HlcTimestamp, origin: &StoreId) -> Stamp {
    (
        hlc.wall_ms as i64,
        i64::from(hlc.counter),
        origin.as_str().to_owned(),
    )
}

/// The write's stamp if it wins over the row `id` of `table` (no row yet: it wins); `None`: the
/// stored row is as new or newer and stays. `table` is one of this crate's table names.
pub fn winning_stamp(
    conn: &Connection,
    table: &'static str,
    id: &str,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<Option<Stamp>> {
    let current: Option<Stamp> = conn
        .prepare_cached(&format!(
            "SELECT hlc_wall_ms, hlc_counter, origin FROM {table} WHERE id = ?1"
        ))?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let incoming = stamp(hlc, origin);
    Ok(current
        .is_none_or(|current| current < incoming)
        .then_some(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wall_ms: u64, counter: u32) -> HlcTimestamp {
        HlcTimestamp { wall_ms, counter }
    }

    #[test]
    fn the_greatest_stamp_wins_and_a_repeat_or_tie_loses() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE gifts (id TEXT PRIMARY KEY, hlc_wall_ms INTEGER, hlc_counter INTEGER,
                 origin TEXT)",
        )?;
        let a = StoreId::parse("store-a").map_err(|_| rusqlite::Error::InvalidQuery)?;
        let b = StoreId::parse("store-b").map_err(|_| rusqlite::Error::InvalidQuery)?;
        assert!(
            winning_stamp(&conn, "gifts", "g", at(10, 0), &a)?.is_some(),
            "no row: wins"
        );
        conn.execute("INSERT INTO gifts VALUES ('g', 10, 0, 'store-a')", [])?;
        assert_eq!(
            winning_stamp(&conn, "gifts", "g", at(10, 0), &a)?,
            None,
            "a repeat"
        );
        assert_eq!(
            winning_stamp(&conn, "gifts", "g", at(9, 5), &b)?,
            None,
            "older"
        );
        assert_eq!(
            winning_stamp(&conn, "gifts", "g", at(10, 0), &b)?,
            Some((10, 0, "store-b".to_owned())),
            "same HLC: the greater origin wins"
        );
        assert!(
            winning_stamp(&conn, "gifts", "g", at(10, 1), &a)?.is_some(),
            "newer"
        );
        Ok(())
    }
}
