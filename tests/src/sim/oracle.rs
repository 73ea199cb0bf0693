//! The checker's own bookkeeping: what cashiers were told, how every spend was vouched for,
//! and what the hub's grants were worth when the spend reached it. The checks compare this
//! against the replicas; nothing here is visible to the nodes.

use std::collections::{BTreeMap, BTreeSet};

use chainsync_core::StoreId;
use chainsync_core::allowance::reservation_ttl_ms;
use chainsync_core::op::Envelope;
use uuid::Uuid;

use super::replica::{Grant, HubNode};

/// Who let a checkout spend stored value, points or coupons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Nothing to vouch for (cash only, no coupon).
    NotNeeded,
    /// The hub granted it over the sync session.
    Online,
    /// The store's offline allowance let it through.
    Offline,
}

/// Why a grant did not hold the money back until the spend reached the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unprotected {
    /// The spend arrived after the reservation's TTL.
    Expired,
    /// The member's group got a new canonical member (a same-phone registration arrived)
    /// while the grant was pending: the hold is keyed by the old one.
    CanonicalChanged,
    /// The first operation of the checkout released the hold before the rest had arrived.
    ReleasedEarly,
}

impl Unprotected {
    pub fn name(self) -> &'static str {
        match self {
            Unprotected::Expired => "expired",
            Unprotected::CanonicalChanged => "canonical changed",
            Unprotected::ReleasedEarly => "released early",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckoutRecord {
    pub store: StoreId,
    /// The member (canonical at the store when it sold), if any.
    pub member: Option<Uuid>,
    pub stored_value: i64,
    pub points: i64,
    pub redemptions: Vec<Uuid>,
    pub authority: Authority,
    /// Highest own sequence number among the checkout's operations.
    pub last_seq: u64,
}

#[derive(Default)]
pub struct Oracle {
    /// Every operation acknowledged to a cashier, as written.
    pub acknowledged: BTreeMap<(StoreId, u64), Envelope>,
    pub checkouts: BTreeMap<Uuid, CheckoutRecord>,
    /// Redemption id → checkout id.
    pub redemption_checkout: BTreeMap<Uuid, Uuid>,
    /// The first grant per checkout, with the hub incarnation that made it.
    pub grants: BTreeMap<Uuid, (Grant, u64)>,
    /// How each granted checkout's hold fared when the checkout reached the hub.
    pub arrivals: BTreeMap<Uuid, Option<Unprotected>>,
    pub hub_incarnation: u64,
    /// Count only the documented gap (a hub crash) as a reason a grant's hold may not last:
    /// an overdraft explained only by another reason then fails the run.
    pub documented_gaps_only: bool,
    /// Stored value and points each member may have overdrawn without an online check:
    /// offline spends and grants whose hold did not last.
    pub allowed_value: BTreeMap<Uuid, i64>,
    pub allowed_points: BTreeMap<Uuid, i64>,
}

impl Oracle {
    pub fn acknowledge(&mut self, envelopes: &[Envelope]) {
        for envelope in envelopes {
            self.acknowledged
                .insert((envelope.origin.clone(), envelope.seq), envelope.clone());
        }
    }

    pub fn record_checkout(&mut self, checkout: Uuid, record: CheckoutRecord) {
        for redemption in &record.redemptions {
            self.redemption_checkout.insert(*redemption, checkout);
        }
        if record.authority == Authority::Offline
            && let Some(member) = record.member
        {
            *self.allowed_value.entry(member).or_default() += record.stored_value;
            *self.allowed_points.entry(member).or_default() += record.points;
        }
        self.checkouts.insert(checkout, record);
    }

    /// Take the hub's new grants, and classify the checkouts that reached it since `before`
    /// (an index into its log).
    pub fn observe_hub(&mut self, hub: &mut HubNode, before: usize, now_ms: u64) {
        for grant in hub.grants.drain(..) {
            self.grants
                .entry(grant.checkout)
                .or_insert((grant, self.hub_incarnation));
        }
        let start = before.min(hub.mem.log.len());
        let mut arrived = BTreeSet::new();
        for envelope in &hub.mem.log[start..] {
            if let Some(checkout) = checkout_of(envelope) {
                arrived.insert(checkout);
            }
        }
        for checkout in arrived {
            if self.arrivals.contains_key(&checkout) {
                continue;
            }
            let Some((grant, _)) = self.grants.get(&checkout) else {
                continue;
            };
            let Some(record) = self.checkouts.get(&checkout) else {
                continue;
            };
            let verdict = if now_ms >= grant.at_ms.saturating_add(reservation_ttl_ms) {
                Some(Unprotected::Expired)
            } else if grant
                .canonical
                .zip(record.member)
                .is_some_and(|(held, member)| hub.proj.canonical(member) != held)
            {
                Some(Unprotected::CanonicalChanged)
            } else if hub.mem.acked.get(&record.store).copied().unwrap_or(0) < record.last_seq {
                Some(Unprotected::ReleasedEarly)
            } else {
                None
            };
            self.arrivals.insert(checkout, verdict);
            let allowed = match verdict {
                Some(_) => !self.documented_gaps_only,
                None => false,
            };
            if allowed
                && record.authority == Authority::Online
                && let Some(member) = record.member
            {
                *self.allowed_value.entry(member).or_default() += record.stored_value;
                *self.allowed_points.entry(member).or_default() += record.points;
            }
        }
    }

    /// Whether a checkout's coupon use was vouched for by a hold that lasted.
    pub fn protected_online(&self, checkout: Uuid) -> bool {
        self.checkouts
            .get(&checkout)
            .is_some_and(|r| r.authority == Authority::Online)
            && matches!(self.arrivals.get(&checkout), Some(None))
    }

    pub fn unprotected_counts(&self) -> BTreeMap<Unprotected, usize> {
        let mut counts = BTreeMap::new();
        for (checkout, verdict) in &self.arrivals {
            if let Some(reason) = verdict
                && self
                    .checkouts
                    .get(checkout)
                    .is_some_and(|r| r.authority == Authority::Online)
            {
                *counts.entry(*reason).or_default() += 1;
            }
        }
        counts
    }
}

/// The checkout an operation belongs to, if any.
pub fn checkout_of(envelope: &Envelope) -> Option<Uuid> {
    use chainsync_core::op::{Op, OpV1};
    match &envelope.op {
        Op::V1(OpV1::Sale(sale)) => Some(sale.id),
        Op::V1(OpV1::CouponRedeem(redemption)) => Some(redemption.checkout_id),
        Op::V1(OpV1::Ledger(entry)) => entry.checkout_id,
        _ => None,
    }
}
