//! In-memory implementations of the sync storage traits, for protocol tests and the
//! deterministic simulation. They keep exactly what the SQLite ones keep: the set of
//! operations, the cursors, and the ledger fold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::allowance::{Decision, ReservationBook};
use crate::sync::{AuthorizeDecision, AuthorizeRequest};
use std::convert::Infallible;

use crate::id::StoreId;
use crate::ledger::MemberLedger;
use crate::op::{Envelope, Op, OpV1};
use crate::sync::{HubSide, RelayedOp, StoreSide};

/// A store's replica: its own operations, those relayed to it, and its cursors.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    pub store_id: StoreId,
    /// Every operation held, by (origin, seq).
    pub ops: BTreeMap<(StoreId, u64), Envelope>,
    pub relay_cursor: u64,
    pub hub_acked: u64,
    pub ledger: MemberLedger,
}

impl MemoryStore {
    pub fn new(store_id: StoreId) -> MemoryStore {
        MemoryStore {
            store_id,
            ops: BTreeMap::new(),
            relay_cursor: 0,
            hub_acked: 0,
            ledger: MemberLedger::default(),
        }
    }

    /// Record an operation written here (the caller stamps seq = own_seq_max + 1).
    pub fn write_local(&mut self, envelope: Envelope) {
        self.hold(envelope);
    }

    fn hold(&mut self, envelope: Envelope) {
        if let Op::V1(OpV1::Ledger(entry)) = &envelope.op {
            self.ledger.insert(entry.clone());
        }
        self.ops
            .entry((envelope.origin.clone(), envelope.seq))
            .or_insert(envelope);
    }

    pub fn own_max(&self) -> u64 {
        self.ops
            .range((self.store_id.clone(), 0)..=(self.store_id.clone(), u64::MAX))
            .next_back()
            .map(|((_, seq), _)| *seq)
            .unwrap_or(0)
    }
}

impl StoreSide for MemoryStore {
    type Error = Infallible;

    fn own_seq_max(&self) -> Result<u64, Infallible> {
        Ok(self.own_max())
    }

    fn own_ops_after(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, Infallible> {
        Ok(self
            .ops
            .range(
                (self.store_id.clone(), after.saturating_add(1))
                    ..=(self.store_id.clone(), u64::MAX),
            )
            .take(limit)
            .map(|(_, envelope)| envelope.clone())
            .collect())
    }

    fn relay_cursor(&self) -> Result<u64, Infallible> {
        Ok(self.relay_cursor)
    }

    fn apply_relayed(&mut self, ops: &[RelayedOp], upto: u64) -> Result<(), Infallible> {
        if upto <= self.relay_cursor {
            return Ok(());
        }
        for op in ops {
            self.hold(op.envelope.clone());
        }
        self.relay_cursor = upto;
        Ok(())
    }

    fn record_hub_acked(&mut self, acked_seq: u64) -> Result<(), Infallible> {
        self.hub_acked = self.hub_acked.max(acked_seq);
        Ok(())
    }

    fn member_changes(&self, member: &Uuid) -> Result<Vec<Vec<u8>>, Infallible> {
        Ok(member_changes_in(self.ops.values(), member))
    }
}

/// The changes of `member` among `ops`.
pub fn member_changes_in<'a>(
    ops: impl Iterator<Item = &'a Envelope>,
    member: &Uuid,
) -> Vec<Vec<u8>> {
    ops.filter_map(|envelope| match &envelope.op {
        Op::V1(OpV1::MemberChange { member_id, change }) if member_id == member => {
            Some(change.clone())
        }
        _ => None,
    })
    .collect()
}

/// The hub's replica: one log in acceptance order, and per-store cursors.
#[derive(Clone, Debug, Default)]
pub struct MemoryHub {
    pub log: Vec<Envelope>,
    pub acked: HashMap<StoreId, u64>,
    pub relay_acked: HashMap<StoreId, u64>,
    pub ledger: MemberLedger,
    /// Redemptions seen per coupon code: (redemption id, store).
    pub redemptions: BTreeMap<String, BTreeSet<(Uuid, StoreId)>>,
    /// Online grants not yet matched by arriving entries (not durable: lost on a crash).
    pub reservations: ReservationBook,
}

impl HubSide for MemoryHub {
    type Error = Infallible;

    fn acked_seq(&self, store: &StoreId) -> Result<u64, Infallible> {
        Ok(self.acked.get(store).copied().unwrap_or(0))
    }

    fn ingest(&mut self, store: &StoreId, ops: &[Envelope]) -> Result<u64, Infallible> {
        let mut acked = self.acked.get(store).copied().unwrap_or(0);
        for envelope in ops {
            if envelope.seq <= acked {
                continue;
            }
            if envelope.seq != acked + 1 {
                break;
            }
            match &envelope.op {
                Op::V1(OpV1::Ledger(entry)) => {
                    if let Some(checkout) = entry.checkout_id {
                        self.reservations.release(checkout);
                    }
                    self.ledger.insert(entry.clone());
                }
                Op::V1(OpV1::CouponRedeem(redemption)) => {
                    self.reservations.release(redemption.checkout_id);
                    self.redemptions
                        .entry(redemption.code.clone())
                        .or_default()
                        .insert((redemption.id, envelope.origin.clone()));
                }
                _ => {}
            }
            self.log.push(envelope.clone());
            acked += 1;
        }
        self.acked.insert(store.clone(), acked);
        Ok(acked)
    }

    fn log_head(&self) -> Result<u64, Infallible> {
        Ok(self.log.len() as u64)
    }

    fn relay_after(
        &self,
        store: &StoreId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<RelayedOp>, u64), Infallible> {
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        let end = start.saturating_add(limit).min(self.log.len());
        let ops = self.log[start..end]
            .iter()
            .enumerate()
            // Stock and transfers go only to the stores they concern; a skipped entry still
            // moves the cursor (`end`).
            .filter(|(_, envelope)| envelope.origin != *store && envelope.op.concerns_store(store))
            .map(|(offset, envelope)| RelayedOp {
                hub_seq: (start + offset + 1) as u64,
                envelope: envelope.clone(),
            })
            .collect();
        Ok((ops, end as u64))
    }

    fn record_relay_acked(&mut self, store: &StoreId, cursor: u64) -> Result<(), Infallible> {
        let entry = self.relay_acked.entry(store.clone()).or_insert(0);
        *entry = (*entry).max(cursor);
        Ok(())
    }

    fn record_hello(&mut self, _store: &StoreId, _own_seq_max: u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn store_caught_up(&mut self, store: &StoreId, hello_ms: u64) -> Result<(), Infallible> {
        self.reservations.store_caught_up(store, hello_ms);
        Ok(())
    }

    fn store_disconnected(&mut self, store: &StoreId) -> Result<(), Infallible> {
        self.reservations.store_disconnected(store);
        Ok(())
    }

    fn member_changes(&self, member: &Uuid) -> Result<Vec<Vec<u8>>, Infallible> {
        Ok(member_changes_in(self.log.iter(), member))
    }

    fn authorize(
        &mut self,
        store: &StoreId,
        request: &AuthorizeRequest,
        now_ms: u64,
    ) -> Result<AuthorizeDecision, Infallible> {
        for code in &request.coupon_codes {
            let redeemed = self.redemptions.get(code).is_some_and(|r| !r.is_empty());
            if redeemed
                || !self
                    .reservations
                    .hold_coupon(code, request.checkout_id, store, now_ms)
            {
                return Ok(AuthorizeDecision::CouponUnavailable {
                    code: code.clone(),
                    reason: "already redeemed".into(),
                });
            }
        }
        let Some(member) = request.member_id else {
            return Ok(AuthorizeDecision::Granted);
        };
        let balances = self.ledger.balances_of(member).unwrap_or_default();
        let stored_value = balances.stored_value().unwrap_or_default();
        Ok(
            match self.reservations.decide(
                request.checkout_id,
                store,
                member,
                request.spend,
                stored_value,
                balances.points,
                now_ms,
            ) {
                Decision::Granted => AuthorizeDecision::Granted,
                Decision::Insufficient {
                    available_stored_value,
                    available_points,
                } => AuthorizeDecision::InsufficientBalance {
                    available_stored_value: available_stored_value.0,
                    available_points,
                },
            },
        )
    }
}
