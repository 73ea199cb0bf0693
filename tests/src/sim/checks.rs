//! The properties, checked on the hub after every batch it takes and on every replica after
//! every heal.

use std::collections::{BTreeMap, BTreeSet};

use chainsync_core::StoreId;
use chainsync_core::exceptions::ExceptionKind;
use chainsync_core::ledger::{Account, EntryKind};
use chainsync_core::op::{Op, OpV1};
use uuid::Uuid;

use super::replica::{Digest, Projection};
use super::world::World;

impl World {
    /// On the hub, after every batch it took:
    /// - every group below zero (stored value or points) and every coupon redeemed twice is
    ///   an open exception, with the current amount;
    /// - a group is overdrawn by no more than what was let through without a lasting online
    ///   hold on its members (offline allowance, grants whose hold was lost), plus, for
    ///   points, what refunds took back of points already spent;
    /// - of the redemptions of one coupon, at most one was vouched for by a lasting hold.
    pub fn check_hub(&mut self) -> Result<(), String> {
        let hub = &self.hub;
        for canonical in hub.proj.canonical_members() {
            let sums = hub.proj.group_sums(canonical);
            let group = hub.proj.group(canonical);
            let allowed = |map: &BTreeMap<Uuid, i64>| -> i128 {
                group
                    .iter()
                    .map(|m| i128::from(map.get(m).copied().unwrap_or(0)))
                    .sum()
            };
            for (kind, below, allowed) in [
                (
                    ExceptionKind::NegativeBalance,
                    sums.stored_value(),
                    allowed(&self.oracle.allowed_value),
                ),
                (
                    ExceptionKind::NegativePoints,
                    sums.points,
                    allowed(&self.oracle.allowed_points) + points_taken_back(&hub.proj, &group),
                ),
            ] {
                if below >= 0 {
                    continue;
                }
                let found = hub.exceptions.get(&(kind, canonical.to_string()));
                if found.is_none_or(|f| i128::from(f.amount) != -below) {
                    return Err(format!(
                        "member {canonical} (group of {}) is {} below zero in {} but the \
                         exception queue says {:?}",
                        group.len(),
                        -below,
                        kind.as_str(),
                        found.map(|f| f.amount)
                    ));
                }
                if -below > allowed {
                    let spends: Vec<String> = self
                        .oracle
                        .checkouts
                        .iter()
                        .filter(|(_, r)| r.member.is_some_and(|m| group.contains(&m)))
                        .filter(|(_, r)| r.stored_value > 0 || r.points > 0)
                        .map(|(id, r)| {
                            format!(
                                "{id} at {} ({:?}{}): {}/{}",
                                r.store,
                                r.authority,
                                match self.oracle.arrivals.get(id) {
                                    Some(Some(reason)) => format!(", hold {}", reason.name()),
                                    Some(None) => String::new(),
                                    None => ", not at the hub yet".to_owned(),
                                },
                                r.stored_value,
                                r.points
                            )
                        })
                        .collect();
                    return Err(format!(
                        "silent overspend: member {canonical} (group of {}) is {} below zero in \
                         {} but only {allowed} was let through without a lasting online hold; its \
                         spends (stored value/points): {}",
                        group.len(),
                        -below,
                        kind.as_str(),
                        spends.join("; ")
                    ));
                }
            }
        }
        if let Some((sale, refunds)) = hub.proj.refunds.iter().find(|(_, r)| r.len() > 1) {
            return Err(format!(
                "sale {sale} was refunded {} times (its stored value and points credited back \
                 each time) and nothing in the exception queue says so",
                refunds.len()
            ));
        }
        super::count_cards::check_hub(&hub.proj.count_cards, &hub.exceptions)?;
        for (code, redemptions) in &hub.proj.redemptions {
            if redemptions.len() < 2 {
                continue;
            }
            let found = hub
                .exceptions
                .get(&(ExceptionKind::DoubleRedemption, code.clone()));
            if found.is_none_or(|f| f.amount != redemptions.len() as i64 - 1) {
                return Err(format!(
                    "coupon {code} redeemed {} times but the exception queue says {:?}",
                    redemptions.len(),
                    found.map(|f| f.amount)
                ));
            }
            let protected = redemptions
                .iter()
                .filter(|(id, _)| {
                    self.oracle
                        .redemption_checkout
                        .get(id)
                        .is_some_and(|checkout| self.oracle.protected_online(*checkout))
                })
                .count();
            if protected > 1 {
                return Err(format!(
                    "coupon {code}: {protected} of its {} redemptions were granted online with \
                     a lasting hold (at most one may be)",
                    redemptions.len()
                ));
            }
        }
        Ok(())
    }

    /// After a heal, on the converged chain.
    pub fn check_converged(&mut self) -> Result<(), String> {
        self.check_hub()?;
        // The reference: the hub's operations projected from scratch in (origin, seq) order —
        // an order unrelated to any arrival order, with automerge changes before their
        // dependencies — which every replica's live projection must equal.
        let hub_id = StoreId::hub();
        let by_key: BTreeMap<(&StoreId, u64), &chainsync_core::op::Envelope> = self
            .hub
            .mem
            .log
            .iter()
            .map(|e| ((&e.origin, e.seq), e))
            .collect();
        let mut hub_scratch = Projection::from_ops(hub_id, true, by_key.into_values());
        let hub_digest = hub_scratch.digest(&self.hub.mem.ledger);
        let live = self.hub.proj.digest(&self.hub.mem.ledger);
        if let Some(difference) = live.difference(&hub_digest) {
            return Err(format!(
                "hub: live projection differs from one rebuilt from its operations: {difference}"
            ));
        }
        check_digest_self("hub", &hub_digest)?;
        if !hub_scratch.damaged.is_empty() || !self.hub.proj.damaged.is_empty() {
            return Err(format!(
                "hub: damaged operations: {:?}",
                hub_scratch.damaged
            ));
        }

        // The hub's log: each operation once, each origin's sequence without gaps.
        let mut per_origin: BTreeMap<&StoreId, BTreeSet<u64>> = BTreeMap::new();
        for envelope in &self.hub.mem.log {
            if !per_origin
                .entry(&envelope.origin)
                .or_default()
                .insert(envelope.seq)
            {
                return Err(format!(
                    "hub: operation {}/{} is twice in the log",
                    envelope.origin, envelope.seq
                ));
            }
        }
        for (origin, seqs) in &per_origin {
            if seqs.first() != Some(&1) || seqs.last() != Some(&(seqs.len() as u64)) {
                return Err(format!("hub: operations of {origin} have a gap"));
            }
        }
        let hub_ops: BTreeMap<(StoreId, u64), &chainsync_core::op::Envelope> = self
            .hub
            .mem
            .log
            .iter()
            .map(|e| ((e.origin.clone(), e.seq), e))
            .collect();

        // Nothing acknowledged to a cashier is lost, or changed, anywhere.
        for (key, written) in &self.oracle.acknowledged {
            if hub_ops.get(key).is_none_or(|held| *held != written) {
                return Err(format!(
                    "operation {}/{} was acknowledged to a cashier but the hub does not hold it \
                     as written",
                    key.0, key.1
                ));
            }
            for node in &self.nodes {
                // Stock reaches only the stores it concerns.
                if super::stock::concerns(&node.id, written)
                    && node
                        .replica
                        .mem
                        .ops
                        .get(key)
                        .is_none_or(|held| held != written)
                {
                    return Err(format!(
                        "operation {}/{} was acknowledged to a cashier but {} does not hold it \
                         as written",
                        key.0, key.1, node.id
                    ));
                }
            }
        }

        // Every replica shows the same state. (A store's own operations projected from scratch
        // would equal the hub's: the same set, and projection is a function of the set.)
        for node in &mut self.nodes {
            let id = node.id.clone();
            let digest = node.replica.proj.digest(&node.replica.mem.ledger);
            check_digest_self(id.as_str(), &digest)?;
            if let Some(difference) = digest.difference(&hub_digest) {
                return Err(format!(
                    "after healing, {id}'s digest {:016x} differs from the hub's {:016x}: \
                     {difference}",
                    digest.fingerprint(),
                    hub_digest.fingerprint()
                ));
            }
            let concerning = hub_ops
                .values()
                .filter(|envelope| super::stock::concerns(&id, envelope))
                .count();
            if node.replica.mem.ops.len() != concerning {
                return Err(format!(
                    "{id} holds {} operations, the hub {concerning} that concern it",
                    node.replica.mem.ops.len(),
                ));
            }
            if let Some((key, _)) = node
                .replica
                .mem
                .ops
                .iter()
                .find(|(key, held)| hub_ops.get(*key).is_none_or(|at_hub| at_hub != held))
            {
                return Err(format!(
                    "{id} holds operation {}/{} but the hub does not, or not the same",
                    key.0, key.1
                ));
            }
        }

        // Stock: folds, sums, scopes, the road, and what each store holds.
        self.check_stock(&hub_scratch)?;

        // The hub's totals against an independent recomputation: the entries cashiers were
        // told were written.
        let mut written: BTreeMap<Uuid, (i128, i128)> = BTreeMap::new();
        for envelope in self.oracle.acknowledged.values() {
            if let Op::V1(OpV1::Ledger(entry)) = &envelope.op {
                let slot = written.entry(entry.member_id).or_default();
                match entry.account {
                    Account::Points => slot.1 += i128::from(entry.amount),
                    _ => slot.0 += i128::from(entry.amount),
                }
            }
        }
        for (member, (value, points)) in &written {
            let sums = self.hub.proj.sums.get(member).copied().unwrap_or_default();
            let fold = self
                .hub
                .mem
                .ledger
                .balances_of(*member)
                .map_err(|e| format!("member {member}: {e}"))?;
            let folded_value = i128::from(fold.principal.0) + i128::from(fold.bonus.0);
            if sums.stored_value() != *value
                || sums.points != *points
                || folded_value != *value
                || i128::from(fold.points) != *points
            {
                return Err(format!(
                    "member {member}: cashiers wrote {value} of stored value and {points} points \
                     but the hub sums {}/{} and folds {folded_value}/{}",
                    sums.stored_value(),
                    sums.points,
                    fold.points
                ));
            }
        }

        // Statistics for the soak report.
        let mut negative = 0;
        let mut overdraft = 0i128;
        for canonical in self.hub.proj.canonical_members() {
            let sums = self.hub.proj.group_sums(canonical);
            if sums.stored_value() < 0 || sums.points < 0 {
                negative += 1;
                overdraft += (-sums.stored_value()).max(0);
            }
            if self.hub.proj.group(canonical).len() > 1 {
                self.report.merged_groups += 1;
            }
        }
        let doubles = self
            .hub
            .proj
            .redemptions
            .values()
            .filter(|r| r.len() > 1)
            .count();
        self.report.overdrawn_members += negative;
        self.report.overdraft_fen += i64::try_from(overdraft).unwrap_or(i64::MAX);
        self.report.double_redemptions += doubles as u64;
        self.report.exceptions = self.hub.exceptions.len() as u64;
        let cards = &self.hub.proj.count_cards;
        self.report.count_cards.overused_cards = cards
            .cards
            .keys()
            .filter(|card| cards.finding(**card).is_some())
            .count() as u64;
        for (reason, count) in self.oracle.unprotected_counts() {
            let slot = self.report.unprotected.entry(reason.name()).or_default();
            *slot = (*slot).max(count as u64);
        }
        Ok(())
    }
}

/// Checks within one replica's digest: balances are the sums of their entries, as the
/// storage folds them; every member document has all its changes.
fn check_digest_self(who: &str, digest: &Digest) -> Result<(), String> {
    for (member, sums) in &digest.balances {
        let folded = digest.fold.get(member);
        let expected = (
            i64::try_from(sums.principal).ok(),
            i64::try_from(sums.bonus).ok(),
            i64::try_from(sums.points).ok(),
        );
        let matches = match folded {
            Some(Ok((principal, bonus, points))) => {
                expected == (Some(*principal), Some(*bonus), Some(*points))
            }
            _ => false,
        };
        if !matches {
            return Err(format!(
                "{who}: member {member}: the ledger folds to {folded:?} but its entries sum to \
                 {sums:?}"
            ));
        }
    }
    if digest.fold.len() != digest.balances.len() {
        return Err(format!(
            "{who}: the ledger has balances for {} members, the entries for {}",
            digest.fold.len(),
            digest.balances.len()
        ));
    }
    if let Some((member, _)) = digest.members.iter().find(|(_, m)| m.3) {
        return Err(format!(
            "{who}: member {member}'s document waits for changes that never arrived"
        ));
    }
    Ok(())
}

/// Points that refunds took back (reversals of points earned), over a group: a refund
/// reverses the points its sale earned even if they were spent meanwhile.
fn points_taken_back(proj: &Projection, group: &[Uuid]) -> i128 {
    group
        .iter()
        .filter_map(|member| proj.entries.get(member))
        .flatten()
        .filter(|e| e.kind == EntryKind::PointsReverse && e.amount < 0)
        .map(|e| -i128::from(e.amount))
        .sum()
}
