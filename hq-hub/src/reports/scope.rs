//! What a caller may see. Admin, hq-ops and auditors see the whole chain; a regional manager
//! sees the stores of their region and the members whose home store is one of them.

use rusqlite::Connection;
use std::collections::{BTreeSet, HashMap};

use crate::users::User;

#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The stores the caller may see (None: all).
    pub stores: Option<BTreeSet<String>>,
    /// Every enrolled store's region.
    pub regions: HashMap<String, String>,
    /// Whether phone numbers are shown in full.
    pub phones: bool,
}

impl Scope {
    pub fn load(conn: &Connection, user: &User) -> rusqlite::Result<Scope> {
        let mut statement = conn.prepare_cached("SELECT store_id, region FROM stores")?;
        let regions = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<HashMap<String, String>>>()?;
        let stores = user.region_scope().map(|region| {
            regions
                .iter()
                .filter(|(_, r)| r.as_str() == region)
                .map(|(store, _)| store.clone())
                .collect()
        });
        Ok(Scope {
            stores,
            regions,
            phones: user.sees_phones(),
        })
    }

    /// Whether rows of this store (or of members with this home store) may be shown.
    pub fn allows(&self, store: &str) -> bool {
        self.stores
            .as_ref()
            .is_none_or(|stores| stores.contains(store))
    }

    /// The region of a store ("" when the store is not enrolled).
    pub fn region_of(&self, store: &str) -> String {
        self.regions.get(store).cloned().unwrap_or_default()
    }

    /// A phone as this caller may see it.
    pub fn phone(&self, phone: &str) -> String {
        if self.phones {
            phone.to_owned()
        } else {
            crate::users::mask_phone(phone)
        }
    }
}
