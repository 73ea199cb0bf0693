//! Offline allowance: what a store may let members spend while it cannot reach the hub.
//!
//! While the link is up, spends of stored value and points are authorized against the
//! chain-wide state at the hub (see [`ReservationBook`]). While it is down, a store authorizes
//! them itself, but only inside limits HQ sets: per member (per store, per offline period) for
//! stored value and for points, and a total for the store across all members. Whatever the
//! allowance lets through that the chain-wide balance did not cover shows up at the hub as an
//! exception when the replicas meet; nothing is rolled back.
//!
//! Everything here is pure: the caller passes the policy, the tracked offline spend and time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::id::StoreId;
use crate::money::Fen;

/// HQ's limits for offline spending. Replicated to every store (the newest version wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowancePolicy {
    pub version: u64,
    /// Stored value one member may spend at one store during one offline period.
    pub member_stored_value_max: Fen,
    /// Points one member may spend at one store during one offline period.
    pub member_points_max: i64,
    /// Stored value plus points (at 1 point = 1 分) all members together may spend at one
    /// store during one offline period.
    pub store_exposure_max: Fen,
    /// How long a store waits for the hub's answer before applying the offline rules, in ms.
    pub authorization_timeout_ms: u64,
}

impl Default for AllowancePolicy {
    fn default() -> AllowancePolicy {
        AllowancePolicy {
            version: 0,
            member_stored_value_max: Fen(50_000),
            member_points_max: 20_000,
            store_exposure_max: Fen(500_000),
            authorization_timeout_ms: 800,
        }
    }
}

/// What a spend asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRequest {
    pub stored_value: Fen,
    pub points: i64,
}

impl SpendRequest {
    pub fn is_empty(&self) -> bool {
        self.stored_value.0 <= 0 && self.points <= 0
    }
    /// Exposure at 1 point = 1 分.
    pub fn exposure(&self) -> i64 {
        self.stored_value
            .0
            .max(0)
            .saturating_add(self.points.max(0))
    }
}

/// Why an offline spend was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfflineRefusal {
    #[error(
        "offline limit: this member may spend {limit} of stored value at this store while the \
         link to HQ is down ({used} used); take another payment method or wait for the link"
    )]
    MemberStoredValue { limit: Fen, used: Fen },
    #[error(
        "offline limit: this member may spend {limit} points at this store while the link to HQ \
         is down ({used} used); take another payment method or wait for the link"
    )]
    MemberPoints { limit: i64, used: i64 },
    #[error(
        "offline limit: this store may take {limit} of stored value and points in all while the \
         link to HQ is down ({used} used); take another payment method or wait for the link"
    )]
    StoreExposure { limit: Fen, used: Fen },
}

/// What a store has let through during the current offline period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineSpend {
    pub per_member: BTreeMap<Uuid, SpendRequest>,
    pub exposure: i64,
}

impl OfflineSpend {
    /// Check a spend against the policy; on success, count it.
    pub fn authorize(
        &mut self,
        policy: &AllowancePolicy,
        member: Uuid,
        request: SpendRequest,
    ) -> Result<(), OfflineRefusal> {
        let used = self.per_member.get(&member).copied().unwrap_or_default();
        let stored_value = used
            .stored_value
            .0
            .saturating_add(request.stored_value.0.max(0));
        let points = used.points.saturating_add(request.points.max(0));
        if request.stored_value.0 > 0 && stored_value > policy.member_stored_value_max.0 {
            return Err(OfflineRefusal::MemberStoredValue {
                limit: policy.member_stored_value_max,
                used: used.stored_value,
            });
        }
        if request.points > 0 && points > policy.member_points_max {
            return Err(OfflineRefusal::MemberPoints {
                limit: policy.member_points_max,
                used: used.points,
            });
        }
        let exposure = self.exposure.saturating_add(request.exposure());
        if exposure > policy.store_exposure_max.0 {
            return Err(OfflineRefusal::StoreExposure {
                limit: policy.store_exposure_max,
                used: Fen(self.exposure),
            });
        }
        self.per_member.insert(
            member,
            SpendRequest {
                stored_value: Fen(stored_value),
                points,
            },
        );
        self.exposure = exposure;
        Ok(())
    }
}

/// The hub's book of spends it authorized that have not arrived as ledger entries yet.
///
/// A grant holds the amount (or the coupon) back from the chain-wide state until one of:
/// - the spend arrives (the caller releases by checkout id);
/// - [`connected_hold_ms`] passed while the granting store stayed connected: a connected store
///   pushes a checkout at once, so its spend is not coming (a retried or failed request, or an
///   answer that came after the store had decided offline);
/// - the store's link ended first ([`ReservationBook::store_disconnected`]): then the hold
///   waits for the store to come back and catch up ([`ReservationBook::store_caught_up`]):
///   everything it held when it said Hello, at least [`authorization_grace_ms`] after the
///   grant, has arrived, and the spend was not among it, so the checkout was never written;
/// - [`reservation_ttl_ms`] passed (a store that never comes back).
///
/// A store cut off right after a grant therefore keeps its hold however long it is away. The
/// hub keeps the book durable (it survives a hub restart); it serializes as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationBook {
    reservations: BTreeMap<Uuid, Reservation>,
    /// Coupon codes granted to a checkout whose redemption has not arrived.
    coupon_holds: BTreeMap<String, CouponHold>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    member: Uuid,
    request: SpendRequest,
    store: StoreId,
    granted_ms: u64,
    /// The store's link ended after the grant: hold until it caught up.
    awaiting_store: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CouponHold {
    checkout: Uuid,
    store: StoreId,
    granted_ms: u64,
    awaiting_store: bool,
}

/// How long a grant holds while its store stays connected without the spend arriving.
pub const connected_hold_ms: u64 = 120_000;

/// The longest a grant holds money back when its store never comes back (30 days).
pub const reservation_ttl_ms: u64 = 30 * 24 * 3_600_000;

/// A grant is given up as abandoned only by a Hello this long after it: longer than any
/// store waits for an answer before it decides a checkout offline, so a checkout still
/// waiting for its grant cannot be written after that Hello.
pub const authorization_grace_ms: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Granted,
    /// The chain-wide balance (less other pending grants) does not cover it.
    Insufficient {
        available_stored_value: Fen,
        available_points: i64,
    },
}

impl ReservationBook {
    /// Decide a spend of `store`'s checkout `checkout` given the member's chain-wide balances.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        checkout: Uuid,
        store: &StoreId,
        member: Uuid,
        request: SpendRequest,
        chain_stored_value: Fen,
        chain_points: i64,
        now_ms: u64,
    ) -> Decision {
        self.expire(now_ms);
        if let Some(existing) = self.reservations.get(&checkout)
            && existing.member == member
            && existing.request == request
        {
            return Decision::Granted;
        }
        let (held_value, held_points) = self
            .reservations
            .iter()
            .filter(|(id, r)| r.member == member && **id != checkout)
            .fold((0i64, 0i64), |(v, p), (_, r)| {
                (
                    v.saturating_add(r.request.stored_value.0),
                    p.saturating_add(r.request.points),
                )
            });
        let available_value = chain_stored_value.0.saturating_sub(held_value);
        let available_points = chain_points.saturating_sub(held_points);
        if request.stored_value.0 > available_value || request.points > available_points {
            return Decision::Insufficient {
                available_stored_value: Fen(available_value.max(0)),
                available_points: available_points.max(0),
            };
        }
        self.reservations.insert(
            checkout,
            Reservation {
                member,
                request,
                store: store.clone(),
                granted_ms: now_ms,
                awaiting_store: false,
            },
        );
        Decision::Granted
    }

    /// Hold `code` for `store`'s checkout `checkout`; false if another checkout holds it.
    pub fn hold_coupon(
        &mut self,
        code: &str,
        checkout: Uuid,
        store: &StoreId,
        now_ms: u64,
    ) -> bool {
        self.expire(now_ms);
        match self.coupon_holds.get(code) {
            Some(hold) if hold.checkout != checkout => false,
            _ => {
                self.coupon_holds.insert(
                    code.to_owned(),
                    CouponHold {
                        checkout,
                        store: store.clone(),
                        granted_ms: now_ms,
                        awaiting_store: false,
                    },
                );
                true
            }
        }
    }

    /// The spend of `checkout` arrived (or was abandoned): stop holding it back. True if
    /// something was held for it.
    pub fn release(&mut self, checkout: Uuid) -> bool {
        let before = self.coupon_holds.len();
        self.coupon_holds
            .retain(|_, hold| hold.checkout != checkout);
        self.reservations.remove(&checkout).is_some() || self.coupon_holds.len() != before
    }

    /// `store` said Hello at `hello_ms` and everything it held then has arrived: its grants
    /// made at least [`authorization_grace_ms`] before that Hello whose spends are still
    /// missing were never used. Returns how many were given up.
    pub fn store_caught_up(&mut self, store: &StoreId, hello_ms: u64) -> usize {
        let abandoned =
            |granted_ms: u64| granted_ms.saturating_add(authorization_grace_ms) <= hello_ms;
        let before = self.reservations.len() + self.coupon_holds.len();
        self.reservations
            .retain(|_, r| !(r.store == *store && abandoned(r.granted_ms)));
        self.coupon_holds
            .retain(|_, hold| !(hold.store == *store && abandoned(hold.granted_ms)));
        before - self.reservations.len() - self.coupon_holds.len()
    }

    /// `store`'s link ended (or the hub restarted: call it for every store): its holds now
    /// wait for it to come back and catch up, however long that takes.
    pub fn store_disconnected(&mut self, store: &StoreId) {
        for r in self.reservations.values_mut().filter(|r| r.store == *store) {
            r.awaiting_store = true;
        }
        for hold in self.coupon_holds.values_mut().filter(|h| h.store == *store) {
            hold.awaiting_store = true;
        }
    }

    /// After a hub restart no store is connected: every hold waits for its store.
    pub fn all_stores_disconnected(&mut self) {
        for r in self.reservations.values_mut() {
            r.awaiting_store = true;
        }
        for hold in self.coupon_holds.values_mut() {
            hold.awaiting_store = true;
        }
    }

    pub fn expire(&mut self, now_ms: u64) {
        let live = |granted_ms: u64, awaiting_store: bool| {
            let lifetime = if awaiting_store {
                reservation_ttl_ms
            } else {
                connected_hold_ms
            };
            granted_ms.saturating_add(lifetime) > now_ms
        };
        self.reservations
            .retain(|_, r| live(r.granted_ms, r.awaiting_store));
        self.coupon_holds
            .retain(|_, hold| live(hold.granted_ms, hold.awaiting_store));
    }

    pub fn len(&self) -> usize {
        self.reservations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn store() -> StoreId {
        StoreId::parse("s1").unwrap()
    }

    #[test]
    fn offline_spend_stops_at_each_limit() {
        let policy = AllowancePolicy {
            member_stored_value_max: Fen(1_000),
            member_points_max: 500,
            store_exposure_max: Fen(2_500),
            ..AllowancePolicy::default()
        };
        let mut spend = OfflineSpend::default();
        let value = |fen| SpendRequest {
            stored_value: Fen(fen),
            points: 0,
        };
        assert!(spend.authorize(&policy, member(1), value(600)).is_ok());
        assert!(matches!(
            spend.authorize(&policy, member(1), value(401)),
            Err(OfflineRefusal::MemberStoredValue { .. })
        ));
        assert!(spend.authorize(&policy, member(1), value(400)).is_ok());
        assert!(spend.authorize(&policy, member(2), value(1_000)).is_ok());
        assert!(matches!(
            spend.authorize(&policy, member(3), value(600)),
            Err(OfflineRefusal::StoreExposure { .. })
        ));
        let points = SpendRequest {
            stored_value: Fen(0),
            points: 501,
        };
        assert!(matches!(
            spend.authorize(&policy, member(4), points),
            Err(OfflineRefusal::MemberPoints { .. })
        ));
        assert_eq!(spend.exposure, 2_000, "refused spends are not counted");
    }

    #[test]
    fn grants_hold_money_back_until_released_or_expired() {
        let mut book = ReservationBook::default();
        let spend = SpendRequest {
            stored_value: Fen(700),
            points: 0,
        };
        let (c1, c2) = (Uuid::from_u128(10), Uuid::from_u128(11));
        assert_eq!(
            book.decide(c1, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Granted
        );
        assert_eq!(
            book.decide(c1, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Granted,
            "retry"
        );
        assert!(matches!(
            book.decide(c2, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Insufficient { .. }
        ));
        book.release(c1);
        assert_eq!(
            book.decide(c2, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Granted
        );
        assert!(matches!(
            book.decide(c1, &store(), member(1), spend, Fen(1_000), 0, 1),
            Decision::Insufficient { .. }
        ));
        assert_eq!(
            book.decide(
                c1,
                &store(),
                member(1),
                spend,
                Fen(1_000),
                0,
                reservation_ttl_ms + 1
            ),
            Decision::Granted,
            "an expired grant no longer holds money back"
        );
    }

    #[test]
    fn a_grant_holds_while_its_store_is_away_and_ends_when_the_store_caught_up_without_it() {
        let mut book = ReservationBook::default();
        let spend = SpendRequest {
            stored_value: Fen(700),
            points: 0,
        };
        let other = StoreId::parse("s2").unwrap();
        let (c1, c2) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let day = 24 * 3_600_000;
        assert_eq!(
            book.decide(c1, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Granted
        );
        assert!(book.hold_coupon("C1", c1, &store(), 0));
        // The store's link ends before its spend arrives.
        book.store_disconnected(&store());
        // A day later (the store still away) the money and the coupon are still held.
        assert!(matches!(
            book.decide(c2, &other, member(1), spend, Fen(1_000), 0, day),
            Decision::Insufficient { .. }
        ));
        assert!(!book.hold_coupon("C1", c2, &other, day));
        // Another store catching up changes nothing; a Hello too soon after the grant neither.
        assert_eq!(book.store_caught_up(&other, day), 0);
        assert_eq!(
            book.store_caught_up(&store(), authorization_grace_ms - 1),
            0
        );
        // The store is back, pushed all it had, and the spend was not there: given up.
        assert_eq!(book.store_caught_up(&store(), day), 2);
        assert_eq!(
            book.decide(c2, &other, member(1), spend, Fen(1_000), 0, day),
            Decision::Granted
        );
        assert!(book.hold_coupon("C1", c2, &other, day));
    }

    #[test]
    fn the_book_survives_a_round_trip_through_its_encoding() {
        let mut book = ReservationBook::default();
        let spend = SpendRequest {
            stored_value: Fen(700),
            points: 3,
        };
        book.decide(
            Uuid::from_u128(10),
            &store(),
            member(1),
            spend,
            Fen(1_000),
            5,
            42,
        );
        book.hold_coupon("C1", Uuid::from_u128(10), &store(), 42);
        let bytes = postcard::to_stdvec(&book).unwrap();
        let back: ReservationBook = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, book);
    }

    #[test]
    fn a_grant_to_a_store_that_stays_connected_lapses_after_the_connected_hold() {
        let mut book = ReservationBook::default();
        let spend = SpendRequest {
            stored_value: Fen(700),
            points: 0,
        };
        let other = StoreId::parse("s2").unwrap();
        let (c1, c2) = (Uuid::from_u128(10), Uuid::from_u128(11));
        // Granted, never written (a retried request); the store stays connected.
        assert_eq!(
            book.decide(c1, &store(), member(1), spend, Fen(1_000), 0, 0),
            Decision::Granted
        );
        assert!(matches!(
            book.decide(
                c2,
                &other,
                member(1),
                spend,
                Fen(1_000),
                0,
                connected_hold_ms - 1
            ),
            Decision::Insufficient { .. }
        ));
        assert_eq!(
            book.decide(
                c2,
                &other,
                member(1),
                spend,
                Fen(1_000),
                0,
                connected_hold_ms
            ),
            Decision::Granted
        );
        // After a hub restart every hold waits for its store.
        book.all_stores_disconnected();
        assert!(matches!(
            book.decide(
                c1,
                &store(),
                member(1),
                spend,
                Fen(1_000),
                0,
                10 * connected_hold_ms
            ),
            Decision::Insufficient { .. }
        ));
    }
}
