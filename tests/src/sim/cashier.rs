//! The cashiers' side of each store, and HQ's own writes: the random workload, executed
//! through the core the way `store-node` does it (look up locally, ask the hub over the sync
//! session when the link is ready, else apply HQ's offline allowance; write every operation of
//! a command durably, in one transaction, before the cashier sees success).

use std::collections::BTreeSet;

use chainsync_core::Fen;
use chainsync_core::allowance::{AllowancePolicy, SpendRequest};
use chainsync_core::checkout::{
    CheckoutError, CouponUse, Movement, Payment, PaymentMethod, PricedLine, Quote,
    quote_with_coupons, reverse,
};
use chainsync_core::coupon::{CouponKind, CouponTemplateV2, Validity};
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile, ProfilePatch};
use chainsync_core::op::{
    CouponRecord, CouponRedemption, CouponTemplate, Envelope, OpV1, RefundRecord, SaleLine,
    SaleRecord,
};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest};
use uuid::Uuid;

use super::oracle::{Authority, CheckoutRecord};
use super::world::{Event, World};

/// A checkout the cashier has rung up, waiting to be vouched for.
#[derive(Clone, Debug)]
pub struct Plan {
    pub checkout: Uuid,
    pub member: Option<Uuid>,
    pub lines: Vec<PricedLine>,
    pub payments: Vec<Payment>,
    pub codes: Vec<String>,
    pub spend: SpendRequest,
}

#[derive(Debug)]
pub struct PendingCheckout {
    pub plan: Plan,
}

/// What the cashiers sell; `S1` is a bundle (套餐, see `stock::bundle_components`).
const catalogue: [(&str, &str, i64); 9] = [
    ("A1", "咖啡", 1_500),
    ("A2", "面包", 800),
    ("B1", "洗发水", 4_500),
    ("B2", "毛巾", 2_900),
    ("C1", "电饭煲", 39_900),
    ("C2", "茶叶", 12_800),
    ("D1", "牛奶", 650),
    ("D2", "水果篮", 8_800),
    ("S1", "早餐套餐", 2_000),
];

const template_plain: Uuid = Uuid::from_u128(0x51);
const template_online_only: Uuid = Uuid::from_u128(0x52);
const template_discount: Uuid = Uuid::from_u128(0x53);

impl World {
    /// One cashier command at `store` (the store is up).
    pub fn command(&mut self, store: usize) -> Result<(), String> {
        self.report.commands += 1;
        match self.rng.below(114) {
            0..=7 => self.register(store),
            8..=11 => self.edit(store),
            12..=33 => self.recharge(store),
            34..=87 => self.checkout(store),
            88..=93 => self.count_card_command(store),
            94 => self.reverse_count_card_use(store),
            95..=99 => self.refund(store),
            _ => self.stock_command(store),
        }
    }

    /// Durably write one command's operations, acknowledge them, and tell the session.
    pub(super) fn commit(&mut self, store: usize, ops: Vec<OpV1>) -> Result<Vec<Envelope>, String> {
        let now = self.now_ms;
        let node = &mut self.nodes[store];
        node.replica.now_ms = node.physical_ms(now);
        let written = node.replica.write_local(ops)?;
        self.oracle.acknowledge(&written);
        self.report.ops += written.len() as u64;
        let node = &mut self.nodes[store];
        let result = match &mut node.link {
            Some(link) => link.store.handle_local_write(&mut node.replica),
            None => Ok(()),
        };
        if let Err(e) = result {
            self.session_failed(store, format!("push failed: {e}"))?;
        }
        self.flush(store);
        Ok(written)
    }

    fn entry(
        &mut self,
        store: usize,
        member: Uuid,
        movement: Movement,
        checkout: Option<Uuid>,
    ) -> OpV1 {
        let id = self.new_id(store);
        OpV1::Ledger(LedgerEntry {
            id,
            origin: self.nodes[store].id.clone(),
            seq: 0,
            hlc: Default::default(),
            member_id: member,
            kind: movement.kind,
            account: movement.account,
            amount: movement.amount,
            checkout_id: checkout,
            reason: None,
            rule_version: self.rules.version,
        })
    }

    /// A random member this store knows, as its canonical member.
    fn pick_member(&mut self, store: usize) -> Option<Uuid> {
        let proj = &self.nodes[store].replica.proj;
        if proj.members.is_empty() {
            return None;
        }
        let index = self.rng.index(proj.members.len());
        let id = proj.members.keys().nth(index).copied()?;
        Some(self.nodes[store].replica.proj.canonical(id))
    }

    fn register(&mut self, store: usize) -> Result<(), String> {
        let phone = format!("139{:08}", self.rng.below(self.config.phone_pool));
        if self.nodes[store]
            .replica
            .proj
            .member_by_phone(&phone)
            .is_some()
        {
            // Already a member here: the cashier finds them instead.
            self.report.lookups += 1;
            return Ok(());
        }
        let id = self.new_id(store);
        let profile = Profile {
            name: format!("会员{}", self.rng.below(100_000)),
            phone,
            card_no: format!("C{:08}", self.rng.below(100_000_000)),
            home_store: Some(self.nodes[store].id.to_string()),
            tags: ["new".to_owned()].into(),
            ..Profile::default()
        };
        let node = &self.nodes[store];
        let (_, change) = MemberDoc::create(&node.id, &profile, node.physical_ms(self.now_ms))
            .map_err(|e| format!("{}: registering a member: {e}", node.id))?;
        self.commit(
            store,
            vec![OpV1::MemberChange {
                member_id: id,
                change,
            }],
        )?;
        self.report.registrations += 1;
        Ok(())
    }

    fn edit(&mut self, store: usize) -> Result<(), String> {
        let proj = &self.nodes[store].replica.proj;
        if proj.members.is_empty() {
            return Ok(());
        }
        let index = self.rng.index(proj.members.len());
        let Some(member) = proj.members.keys().nth(index).copied() else {
            return Ok(());
        };
        let mut patch = ProfilePatch::default();
        match self.rng.below(4) {
            0 => patch.note = Some(Some(format!("备注{}", self.rng.below(1_000)))),
            1 => patch.email = Some(Some(format!("m{}@example.com", self.rng.below(1_000)))),
            2 => patch.name = Some(format!("会员{}", self.rng.below(100_000))),
            _ => {
                let mut tags: BTreeSet<String> = self.nodes[store]
                    .replica
                    .proj
                    .members
                    .get(&member)
                    .map(|m| m.doc.profile().tags)
                    .unwrap_or_default();
                let tag = ["vip", "new", "family", "staff", "wholesale"][self.rng.index(5)];
                if !tags.remove(tag) {
                    tags.insert(tag.to_owned());
                }
                patch.tags = Some(tags);
            }
        }
        let now = self.nodes[store].physical_ms(self.now_ms);
        let Some(state) = self.nodes[store].replica.proj.members.get_mut(&member) else {
            return Ok(());
        };
        if state.doc.has_missing_changes() {
            return Ok(());
        }
        let change = state
            .doc
            .edit(&patch, now)
            .map_err(|e| format!("editing member {member}: {e}"))?;
        if let Some(change) = change {
            self.commit(
                store,
                vec![OpV1::MemberChange {
                    member_id: member,
                    change,
                }],
            )?;
            self.report.edits += 1;
        }
        Ok(())
    }

    fn recharge(&mut self, store: usize) -> Result<(), String> {
        let Some(member) = self.pick_member(store) else {
            return Ok(());
        };
        let amount = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000][self.rng.index(6)];
        let bonus = self
            .rules
            .recharge_bonus_for(Fen(amount))
            .map_err(|e| e.to_string())?;
        let mut ops = vec![self.entry(
            store,
            member,
            Movement {
                kind: EntryKind::RechargePrincipal,
                account: Account::Principal,
                amount,
            },
            None,
        )];
        if bonus.0 > 0 {
            ops.push(self.entry(
                store,
                member,
                Movement {
                    kind: EntryKind::RechargeBonus,
                    account: Account::Bonus,
                    amount: bonus.0,
                },
                None,
            ));
        }
        self.commit(store, ops)?;
        self.report.recharges += 1;
        Ok(())
    }

    fn quote_plan(&self, store: usize, plan: &Plan) -> Result<Quote, CheckoutError> {
        let proj = &self.nodes[store].replica.proj;
        let mut coupons = Vec::new();
        for code in &plan.codes {
            let template = proj
                .coupons
                .get(code)
                .and_then(|template| proj.templates.get(template));
            // The store's own rule check (bearer coupons, valid while the simulation runs).
            let Some(template) = template else {
                return Err(CheckoutError::EmptyCart);
            };
            let tier = plan.member.map(|_| self.rules.tier_for_spend(Fen::ZERO));
            let facts = chainsync_core::coupon::CouponFacts {
                code,
                template,
                valid_from_ms: 0,
                valid_until_ms: u64::MAX,
                owner: None,
                redeemed: false,
                member_redemptions: 0,
            };
            let ctx = chainsync_core::coupon::RedeemContext {
                now_ms: self.now_ms,
                utc_offset_seconds: 8 * 3_600,
                store: "",
                member: plan.member,
                total: chainsync_core::checkout::total_after_tier(&plan.lines, tier)?,
                lines: &plan.lines,
                coupons_in_checkout: plan.codes.len(),
                offline: false,
            };
            match chainsync_core::coupon::check_redeem(&facts, &ctx) {
                Ok(value) => coupons.push(CouponUse {
                    value,
                    min_spend: template.min_spend,
                }),
                Err(_) => return Err(CheckoutError::EmptyCart),
            }
        }
        // Every member is in the first tier here (the simulation keeps no 12-month spend).
        let tier = plan.member.map(|_| self.rules.tier_for_spend(Fen::ZERO));
        let balances = plan.member.map(|member| proj.group_sums(member).balances());
        quote_with_coupons(
            &self.rules,
            &plan.lines,
            tier,
            balances,
            &plan.payments,
            &coupons,
        )
    }

    fn checkout(&mut self, store: usize) -> Result<(), String> {
        let member = if self.rng.chance(800) {
            self.pick_member(store)
        } else {
            None
        };
        let coupon = self.rng.chance(250);
        // Now and then the same card (or coupon) is used at another store moments later: a
        // shared family card, a forwarded coupon. Both cashiers try to take everything.
        let twin = self.rng.chance(self.config.twin_per_mille) && self.nodes.len() > 1;
        let code = self.ring_up(store, member, coupon, None, twin)?;
        if twin && (member.is_some() || code.is_some()) {
            let other = (store + 1 + self.rng.index(self.nodes.len() - 1)) % self.nodes.len();
            let delay = self.rng.below(1_500);
            self.report.twins += 1;
            self.after(
                delay,
                Event::Twin {
                    store: other,
                    member,
                    code,
                },
            );
        }
        Ok(())
    }

    /// The second use of a shared card or coupon, at another store.
    pub fn twin_checkout(
        &mut self,
        store: usize,
        member: Option<Uuid>,
        code: Option<String>,
    ) -> Result<(), String> {
        // This store may not know the member (or the coupon) yet: then it is a plain sale.
        let proj = &self.nodes[store].replica.proj;
        let member = member
            .filter(|m| proj.members.contains_key(m))
            .map(|m| proj.canonical(m));
        let wanted = code.is_some();
        self.ring_up(store, member, wanted, code, true).map(|_| ())
    }

    /// Ring up a checkout and send it on its way (hub, offline rules, or straight to the
    /// ledger). `greedy`: pay as much as the card holds. Returns the coupon code used.
    fn ring_up(
        &mut self,
        store: usize,
        member: Option<Uuid>,
        coupon: bool,
        code: Option<String>,
        greedy: bool,
    ) -> Result<Option<String>, String> {
        let mut lines = Vec::new();
        let local = member.map(|m| self.nodes[store].replica.proj.group_sums(m).balances());
        let value = local
            .map(|b| b.stored_value().unwrap_or_default().0.max(0))
            .unwrap_or(0);
        if greedy && value > 0 {
            // A basket worth at least what the card holds.
            let (sku, name, price) = catalogue[4];
            lines.push(PricedLine {
                sku: sku.to_owned(),
                name: name.to_owned(),
                qty: (value / price + 1).min(1_000),
                unit_price: Fen(price),
            });
        } else {
            for _ in 0..self.rng.range(1, 3) {
                let (sku, name, price) = catalogue[self.rng.index(catalogue.len())];
                lines.push(PricedLine {
                    sku: sku.to_owned(),
                    name: name.to_owned(),
                    qty: self.rng.range(1, 3) as i64,
                    unit_price: Fen(price),
                });
            }
        }
        // A coupon this store knows, has not seen redeemed, and whose minimum the cart reaches.
        let subtotal: i64 = lines.iter().map(|l| l.unit_price.0 * l.qty).sum();
        let mut codes = Vec::new();
        if coupon {
            let proj = &self.nodes[store].replica.proj;
            let usable: Vec<String> = proj
                .coupons
                .iter()
                .filter(|(candidate, template)| {
                    code.as_ref().is_none_or(|c| c == *candidate)
                        && !proj.is_redeemed(candidate)
                        && proj
                            .templates
                            .get(*template)
                            .is_some_and(|t| t.min_spend.0 <= subtotal)
                })
                .map(|(candidate, _)| candidate.clone())
                .collect();
            if !usable.is_empty() {
                codes.push(usable[self.rng.index(usable.len())].clone());
            }
        }
        let mut plan = Plan {
            checkout: Uuid::nil(),
            member,
            lines,
            payments: Vec::new(),
            codes,
            spend: SpendRequest::default(),
        };
        // What is due (the quote says so when no payment matches).
        let due = match self.quote_plan(store, &plan) {
            Ok(_) => Fen::ZERO,
            Err(CheckoutError::PaymentsMismatch { due, .. }) => due,
            Err(_) => {
                self.report.refused_locally += 1;
                return Ok(None);
            }
        };
        let mut rest = due.0;
        if let (Some(_), Some(local)) = (member, local) {
            let style = if greedy { 0 } else { self.rng.below(10) };
            match style {
                // Stored value: what is due, or everything left on the card.
                0..=4 => {
                    let amount = if greedy || self.rng.chance(300) {
                        value.min(rest)
                    } else {
                        rest
                    };
                    if amount > 0 {
                        plan.payments.push(Payment {
                            method: PaymentMethod::StoredValue,
                            amount: Fen(amount),
                        });
                        rest -= amount;
                    }
                }
                // Points, up to what the member has.
                5..=6 => {
                    let points = local.points.max(0).min(rest);
                    if points > 0 {
                        plan.payments.push(Payment {
                            method: PaymentMethod::Points,
                            amount: Fen(points),
                        });
                        rest -= points;
                    }
                }
                _ => {}
            }
        }
        if rest > 0 {
            plan.payments.push(Payment {
                method: if self.rng.chance(500) {
                    PaymentMethod::Cash
                } else {
                    PaymentMethod::External
                },
                amount: Fen(rest),
            });
        }
        for payment in &plan.payments {
            match payment.method {
                PaymentMethod::StoredValue => plan.spend.stored_value = payment.amount,
                PaymentMethod::Points => {
                    plan.spend.points = payment.amount.0 / self.rules.point_value_fen.max(1)
                }
                _ => {}
            }
        }
        if self.quote_plan(store, &plan).is_err() {
            // Not enough on the card as this store sees it (or a coupon's minimum).
            self.report.refused_locally += 1;
            return Ok(None);
        }
        plan.checkout = self.new_id(store);
        let used = plan.codes.first().cloned();
        let needs_hub = (plan.member.is_some() && !plan.spend.is_empty()) || !plan.codes.is_empty();
        if !needs_hub {
            return self
                .finish_checkout(store, plan, Authority::NotNeeded)
                .map(|_| used);
        }
        let timeout = self.nodes[store]
            .replica
            .proj
            .policy()
            .authorization_timeout_ms;
        let node = &mut self.nodes[store];
        let request_id = node.next_request;
        let asked = match &mut node.link {
            Some(link) => link.store.request_authorization(AuthorizeRequest {
                request_id,
                checkout_id: plan.checkout,
                member_id: plan.member,
                spend: plan.spend,
                coupon_codes: plan.codes.clone(),
            }),
            None => false,
        };
        if asked {
            node.next_request += 1;
            node.pending.insert(request_id, PendingCheckout { plan });
            self.after(
                timeout,
                Event::AuthDeadline {
                    store,
                    request: request_id,
                },
            );
            self.report.authorizations_asked += 1;
            self.flush(store);
            Ok(used)
        } else {
            self.offline_checkout(store, plan).map(|_| used)
        }
    }

    /// The hub answered an authorization request.
    pub fn authorization_reply(
        &mut self,
        store: usize,
        request: u64,
        decision: AuthorizeDecision,
    ) -> Result<(), String> {
        let Some(pending) = self.nodes[store].pending.remove(&request) else {
            // Too late (the cashier already used the offline rules) or a duplicate.
            self.report.late_replies += 1;
            return Ok(());
        };
        match decision {
            AuthorizeDecision::Granted => {
                self.report.online_grants += 1;
                self.finish_checkout(store, pending.plan, Authority::Online)?;
                self.nemesis_after_grant(store)
            }
            AuthorizeDecision::InsufficientBalance { .. } => {
                self.report.refused_by_hub += 1;
                Ok(())
            }
            AuthorizeDecision::CouponUnavailable { .. } => {
                self.report.coupons_refused_by_hub += 1;
                Ok(())
            }
        }
    }

    /// No answer from the hub (or no link): HQ's offline rules decide.
    pub fn offline_checkout(&mut self, store: usize, plan: Plan) -> Result<(), String> {
        let proj = &self.nodes[store].replica.proj;
        let online_only = plan.codes.iter().any(|code| {
            proj.coupons
                .get(code)
                .and_then(|template| proj.templates.get(template))
                .is_none_or(|template| template.online_only)
        });
        if online_only {
            self.report.refused_online_only += 1;
            return Ok(());
        }
        self.finish_checkout(store, plan, Authority::Offline)
    }

    /// Write a vouched-for checkout: sale, redemptions, ledger movements (store-node's order).
    fn finish_checkout(
        &mut self,
        store: usize,
        plan: Plan,
        authority: Authority,
    ) -> Result<(), String> {
        // As at the till: look again at what this store holds now.
        if plan
            .codes
            .iter()
            .any(|code| self.nodes[store].replica.proj.is_redeemed(code))
        {
            self.report.refused_locally += 1;
            return Ok(());
        }
        let quote = match self.quote_plan(store, &plan) {
            Ok(quote) => quote,
            Err(_) => {
                self.report.refused_locally += 1;
                return Ok(());
            }
        };
        if authority == Authority::Offline
            && let Some(member) = plan.member
            && !plan.spend.is_empty()
        {
            let policy: AllowancePolicy = self.nodes[store].replica.proj.policy();
            let id = self.nodes[store].id.clone();
            let offline = &mut self.nodes[store].replica.offline;
            if offline.authorize(&policy, member, plan.spend).is_err() {
                self.report.refused_offline_limit += 1;
                return Ok(());
            }
            let used = offline.per_member.get(&member).copied().unwrap_or_default();
            if used.stored_value > policy.member_stored_value_max
                || used.points > policy.member_points_max
                || offline.exposure > policy.store_exposure_max.0
            {
                return Err(format!(
                    "{}: the offline allowance let member {member} reach {used:?} (exposure {}) \
                     past policy {policy:?}",
                    id, offline.exposure
                ));
            }
            self.report.offline_spends += 1;
        }
        let now = self.nodes[store].physical_ms(self.now_ms);
        let sale = SaleRecord {
            id: plan.checkout,
            member_id: plan.member,
            lines: plan
                .lines
                .iter()
                .map(|line| SaleLine {
                    sku: line.sku.clone(),
                    name: line.name.clone(),
                    qty: line.qty,
                    unit_price: line.unit_price,
                    amount: Fen(line.unit_price.0 * line.qty),
                })
                .collect(),
            payments: plan.payments.clone(),
            subtotal: quote.subtotal,
            discount: quote.discount,
            total: quote.total,
            points_earned: quote.points_earned,
            tier: quote.tier_name.clone(),
            rule_version: self.rules.version,
            at_ms: now,
        };
        let mut ops = vec![OpV1::Sale(sale)];
        // As store-node: the sale's stock movements right after the sale.
        let sold: Vec<(String, i64)> = plan
            .lines
            .iter()
            .map(|line| (line.sku.clone(), line.qty))
            .collect();
        ops.extend(self.sale_stock_op(store, plan.checkout, &sold));
        let mut redemptions = Vec::new();
        for code in &plan.codes {
            let id = self.new_id(store);
            redemptions.push(id);
            ops.push(OpV1::CouponRedeem(CouponRedemption {
                id,
                code: code.clone(),
                checkout_id: plan.checkout,
                member_id: plan.member,
            }));
        }
        if let Some(member) = plan.member {
            for movement in &quote.movements {
                let op = self.entry(store, member, *movement, Some(plan.checkout));
                ops.push(op);
            }
        }
        let written = self.commit(store, ops)?;
        self.stock_committed(store, &written)?;
        let last_seq = written.last().map(|e| e.seq).unwrap_or(0);
        self.log(|| {
            format!(
                "s{store}: checkout {} for {:?}: {} of stored value, {} points, coupons {:?} \
                 ({authority:?}), operations up to {last_seq}",
                plan.checkout, plan.member, plan.spend.stored_value, plan.spend.points, plan.codes
            )
        });
        self.oracle.record_checkout(
            plan.checkout,
            CheckoutRecord {
                store: self.nodes[store].id.clone(),
                member: plan.member,
                stored_value: plan.spend.stored_value.0,
                points: plan.spend.points,
                redemptions,
                authority,
                last_seq,
            },
        );
        self.report.checkouts += 1;
        self.report.coupon_redemptions += plan.codes.len() as u64;
        Ok(())
    }

    fn refund(&mut self, store: usize) -> Result<(), String> {
        let own = self.nodes[store].id.clone();
        let cross = self.config.cross_store_refunds;
        let proj = &self.nodes[store].replica.proj;
        let refundable: Vec<Uuid> = proj
            .sales
            .iter()
            .filter(|(id, sale)| {
                (cross || sale.origin == own)
                    && sale.member.is_some()
                    && !proj.is_refunded(**id)
                    && proj.sale_movements.contains_key(*id)
            })
            .map(|(id, _)| *id)
            .collect();
        if refundable.is_empty() {
            return Ok(());
        }
        let sale_id = refundable[self.rng.index(refundable.len())];
        let proj = &self.nodes[store].replica.proj;
        let Some((member, total)) = proj
            .sales
            .get(&sale_id)
            .and_then(|s| s.member.map(|m| (m, s.total)))
        else {
            return Ok(());
        };
        let original: Vec<Movement> = proj
            .sale_movements
            .get(&sale_id)
            .map(|list| {
                list.iter()
                    .map(|(kind, account, amount)| Movement {
                        kind: *kind,
                        account: *account,
                        amount: *amount,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let id = self.new_id(store);
        let now = self.nodes[store].physical_ms(self.now_ms);
        let mut ops = vec![OpV1::SaleRefund(RefundRecord {
            id,
            sale_id,
            member_id: Some(member),
            amount: total,
            reason: Some("顾客退货".to_owned()),
            at_ms: now,
        })];
        ops.extend(self.sale_return_stock_op(store, sale_id, id));
        for movement in reverse(&original) {
            let op = self.entry(store, member, movement, Some(sale_id));
            ops.push(op);
        }
        let written = self.commit(store, ops)?;
        self.stock_committed(store, &written)?;
        self.log(|| format!("s{store}: refund {id} of sale {sale_id}"));
        self.report.refunds += 1;
        Ok(())
    }

    /// HQ's writes: coupon templates on the first day, a new allowance policy each morning,
    /// and a few coupons now and then.
    pub fn hq_writes(&mut self) -> Result<(), String> {
        if !self.business {
            return Ok(());
        }
        let gap = self.config.day_ms / 4;
        let wait = self.rng.range(gap / 2, gap * 3 / 2);
        self.after(wait.max(1), Event::Hq);
        if !self.hub_up {
            return Ok(());
        }
        let before = self.hub.mem.log.len();
        self.hub.now_ms = self.now_ms;
        if self.hub.proj.templates.is_empty() {
            for (id, name, value, min_spend, online_only) in [
                (template_plain, "满50减10", 1_000, 5_000, false),
                (template_online_only, "满80减20（联网）", 2_000, 8_000, true),
            ] {
                self.hub
                    .write_hq(OpV1::CouponTemplateUpsert(CouponTemplate {
                        id,
                        name: name.to_owned(),
                        value: Fen(value),
                        min_spend: Fen(min_spend),
                        online_only,
                    }))?;
            }
            // A richer template: 10 % off (at most ¥15) from ¥30, valid 30 days after issue.
            self.hub
                .write_hq(OpV1::CouponTemplateUpsertV2(CouponTemplateV2 {
                    id: template_discount,
                    name: "九折券".to_owned(),
                    kind: CouponKind::Discount {
                        off_bp: 1_000,
                        max_off: Fen(1_500),
                    },
                    min_spend: Fen(3_000),
                    validity: Validity::DaysAfterIssue { days: 30 },
                    stores: Vec::new(),
                    window: None,
                    per_member_limit: 0,
                    stackable: true,
                    online_only: false,
                    active: true,
                    pool: None,
                    issue_on_spend: None,
                    issue_on_checkin_streak: false,
                    issue_on_birthday: false,
                }))?;
        }
        let version = u64::from(self.day) + 1;
        if self
            .hub
            .proj
            .policy
            .as_ref()
            .is_none_or(|p| p.version < version)
        {
            let base = self.config.policy.clone();
            let factor = [1, 2, 4][self.rng.index(3)];
            let policy = AllowancePolicy {
                version,
                member_stored_value_max: Fen(base.member_stored_value_max.0 * factor / 2),
                member_points_max: base.member_points_max * factor / 2,
                store_exposure_max: Fen(base.store_exposure_max.0 * factor / 2),
                authorization_timeout_ms: base.authorization_timeout_ms,
            };
            self.hub.write_hq(OpV1::AllowancePolicySet(policy))?;
        }
        self.hq_count_card_template()?;
        self.hq_transfer()?;
        for _ in 0..self.config.coupons_per_issue {
            let code = format!("Q{:x}{:08x}", self.seed, self.rng.next_u64() as u32);
            let template = if self.rng.chance(300) {
                template_online_only
            } else if self.rng.chance(300) {
                template_discount
            } else {
                template_plain
            };
            if template == template_discount {
                // The richer issue: channel and validity fixed at issue (the simulation runs
                // fewer than 30 days, so it stays valid).
                self.hub.write_hq(OpV1::CouponIssueV2(
                    chainsync_core::coupon::CouponInstance {
                        code,
                        template_id: template,
                        member_id: None,
                        channel: chainsync_core::coupon::Channel::Hq,
                        issued_ms: self.now_ms,
                        valid_from_ms: 0,
                        valid_until_ms: u64::MAX,
                        pool_store: None,
                    },
                ))?;
            } else {
                self.hub.write_hq(OpV1::CouponIssue(CouponRecord {
                    code,
                    template_id: template,
                    member_id: None,
                }))?;
            }
            self.report.coupons_issued += 1;
        }
        self.after_hub_call(before)
    }
}
