//! Count cards (计次卡) in the simulation: HQ writes a template on the first day; cashiers sell
//! cards and take one use per visit against what their replica holds (also while cut off);
//! now and then the same card is used at another store a moment later (a card shared in a
//! family). Uses at stores apart can exceed a card's uses: the hub must then hold a
//! `count_card_overuse` exception with the current excess, and every replica must show the
//! same uses per card after a heal (part of the digest).
//!
//! Hooks: `Projection::apply` hands count-card operations to [`CountCards::apply`]; the hub's
//! exception refresh calls [`CountCards::finding`]; `check_hub` calls [`check_hub`]; the
//! cashier's command mix calls [`World::count_card_command`]; HQ's writes call
//! [`World::hq_count_card_template`].

use std::collections::{BTreeMap, BTreeSet};

use chainsync_core::count_card::{
    self, CountCardPurchase, CountCardTemplate, CountCardUse, CountCardUseReversal,
};
use chainsync_core::exceptions::{ExceptionKind, Finding};
use chainsync_core::op::OpV1;
use chainsync_core::{Fen, StoreId};
use uuid::Uuid;

use super::world::World;

const card_template: Uuid = Uuid::from_u128(0x61);
/// Few uses, so that two stores apart often take the last one.
const card_uses: u32 = 3;

/// Count-card state of one replica: a function of the set of operations.
#[derive(Clone, Debug, Default)]
pub struct CountCards {
    pub templates: BTreeSet<Uuid>,
    /// Card → (member, uses), from its purchase.
    pub cards: BTreeMap<Uuid, (Uuid, u32)>,
    /// Card → its uses (id, store), whether or not the purchase has arrived.
    pub uses: BTreeMap<Uuid, BTreeSet<(Uuid, StoreId)>>,
    /// Uses given back (by use id).
    pub reversed: BTreeSet<Uuid>,
}

/// Card → (terms, live uses), canonical.
pub type CardDigest = BTreeMap<Uuid, (Option<(Uuid, u32)>, Vec<(Uuid, StoreId)>)>;

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct CardReport {
    pub bought: u64,
    pub uses: u64,
    pub shared_uses: u64,
    pub refused_used_up: u64,
    pub overused_cards: u64,
}

impl CardReport {
    pub fn add(&mut self, other: &CardReport) {
        self.bought += other.bought;
        self.uses += other.uses;
        self.shared_uses += other.shared_uses;
        self.refused_used_up += other.refused_used_up;
        self.overused_cards += other.overused_cards;
    }
}

impl CountCards {
    /// Project a count-card operation; returns the card it touched.
    pub fn apply(&mut self, op: &OpV1, origin: &StoreId) -> Option<Uuid> {
        match op {
            OpV1::CountCardTemplateUpsert(template) => {
                self.templates.insert(template.id);
                None
            }
            OpV1::CountCardPurchase(card) => {
                self.cards.insert(card.id, (card.member_id, card.uses));
                Some(card.id)
            }
            OpV1::CountCardUse(card_use) => {
                self.uses
                    .entry(card_use.card_id)
                    .or_default()
                    .insert((card_use.id, origin.clone()));
                Some(card_use.card_id)
            }
            OpV1::CountCardUseReversal(reversal) => {
                self.reversed.insert(reversal.use_id);
                Some(reversal.card_id)
            }
            _ => None,
        }
    }

    /// Live uses of a card (not given back), as (use id, store).
    pub fn live_uses(&self, card: Uuid) -> Vec<(Uuid, StoreId)> {
        self.uses
            .get(&card)
            .map(|set| {
                set.iter()
                    .filter(|(id, _)| !self.reversed.contains(id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn remaining(&self, card: Uuid) -> Option<i64> {
        let (_, uses) = self.cards.get(&card)?;
        Some(count_card::remaining(
            *uses,
            self.live_uses(card).len() as u64,
            0,
        ))
    }

    /// The hub's exception for a card, as `hq-hub` computes it.
    pub fn finding(&self, card: Uuid) -> Option<Finding> {
        let (member, uses) = self.cards.get(&card)?;
        count_card::overuse_finding(card, *member, *uses, &self.live_uses(card))
    }

    /// Canonical form for the digest: card → (terms, live uses).
    pub fn digest(&self) -> CardDigest {
        let mut cards: BTreeSet<Uuid> = self.cards.keys().copied().collect();
        cards.extend(self.uses.keys().copied());
        cards
            .into_iter()
            .map(|card| (card, (self.cards.get(&card).copied(), self.live_uses(card))))
            .collect()
    }
}

/// Every overused card at the hub is in the exception queue with its current excess.
pub fn check_hub(
    cards: &CountCards,
    exceptions: &BTreeMap<(ExceptionKind, String), Finding>,
) -> Result<(), String> {
    for (card, (_, uses)) in &cards.cards {
        let live = cards.live_uses(*card).len() as i64;
        let over = live - i64::from(*uses);
        if over < 1 {
            continue;
        }
        let found = exceptions.get(&(ExceptionKind::CountCardOveruse, card.to_string()));
        if found.is_none_or(|f| f.amount != over) {
            return Err(format!(
                "count card {card} used {live} times of {uses} but the exception queue says {:?}",
                found.map(|f| f.amount)
            ));
        }
    }
    Ok(())
}

impl World {
    /// HQ's count-card template (first day).
    pub fn hq_count_card_template(&mut self) -> Result<(), String> {
        if self.hub.proj.count_cards.templates.contains(&card_template) {
            return Ok(());
        }
        self.hub
            .write_hq(OpV1::CountCardTemplateUpsert(CountCardTemplate {
                id: card_template,
                name: "洗车3次卡".to_owned(),
                service: "洗车".to_owned(),
                uses: card_uses,
                price: Fen(9_900),
                validity_days: 365,
                active: true,
            }))
    }

    /// A cashier's count-card command: sell a card, or take a use of one of the member's
    /// cards (and, now and then, the same card at another store a moment later).
    pub fn count_card_command(&mut self, store: usize) -> Result<(), String> {
        let Some(member) = self.pick_count_card_member(store) else {
            return Ok(());
        };
        let cards = self.member_cards(store, member);
        if cards.is_empty() || self.rng.chance(150) {
            return self.buy_count_card(store, member);
        }
        let card = cards[self.rng.index(cards.len())];
        if self.use_count_card(store, card)? && self.rng.chance(300) {
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|s| *s != store && self.nodes[*s].up)
                .collect();
            if !others.is_empty() {
                let other = others[self.rng.index(others.len())];
                if self.use_count_card(other, card)? {
                    self.report.count_cards.shared_uses += 1;
                }
            }
        }
        Ok(())
    }

    fn pick_count_card_member(&mut self, store: usize) -> Option<Uuid> {
        let proj = &self.nodes[store].replica.proj;
        if proj.members.is_empty() || proj.count_cards.templates.is_empty() {
            return None;
        }
        let index = self.rng.index(proj.members.len());
        let id = proj.members.keys().nth(index).copied()?;
        Some(proj.canonical(id))
    }

    /// Cards of `member`'s group as this store sees them.
    fn member_cards(&self, store: usize, member: Uuid) -> Vec<Uuid> {
        let proj = &self.nodes[store].replica.proj;
        let group = proj.group(member);
        proj.count_cards
            .cards
            .iter()
            .filter(|(_, (owner, _))| group.contains(owner))
            .map(|(card, _)| *card)
            .collect()
    }

    fn buy_count_card(&mut self, store: usize, member: Uuid) -> Result<(), String> {
        let id = self.new_id(store);
        let at_ms = self.nodes[store].physical_ms(self.now_ms);
        let card = CountCardPurchase {
            id,
            template_id: card_template,
            member_id: member,
            name: "洗车3次卡".to_owned(),
            service: "洗车".to_owned(),
            uses: card_uses,
            price: Fen(9_900),
            method: "cash".to_owned(),
            at_ms,
            expires_ms: count_card::expiry(at_ms, 365),
            rule_version: self.rules.version,
        };
        self.commit(store, vec![OpV1::CountCardPurchase(card)])?;
        self.log(|| format!("s{store}: count card {id} for {member}"));
        self.report.count_cards.bought += 1;
        Ok(())
    }

    /// One use at `store` if its replica says one is left; false if refused or unknown here.
    fn use_count_card(&mut self, store: usize, card: Uuid) -> Result<bool, String> {
        let proj = &self.nodes[store].replica.proj;
        let Some((member, _)) = proj.count_cards.cards.get(&card).copied() else {
            return Ok(false);
        };
        if proj.count_cards.remaining(card).unwrap_or(0) < 1 {
            self.report.count_cards.refused_used_up += 1;
            return Ok(false);
        }
        let id = self.new_id(store);
        let at_ms = self.nodes[store].physical_ms(self.now_ms);
        let card_use = CountCardUse {
            id,
            card_id: card,
            member_id: member,
            at_ms,
            note: None,
        };
        self.commit(store, vec![OpV1::CountCardUse(card_use)])?;
        self.log(|| format!("s{store}: count card {card} used ({id})"));
        self.report.count_cards.uses += 1;
        Ok(true)
    }

    /// Give back the newest live use of a card taken at this store (a refunded visit).
    pub fn reverse_count_card_use(&mut self, store: usize) -> Result<(), String> {
        let origin = self.nodes[store].id.clone();
        let proj = &self.nodes[store].replica.proj;
        let found = proj
            .count_cards
            .cards
            .iter()
            .find_map(|(card, (member, _))| {
                proj.count_cards
                    .live_uses(*card)
                    .into_iter()
                    .find(|(_, at)| *at == origin)
                    .map(|(use_id, _)| (*card, *member, use_id))
            });
        let Some((card, member, use_id)) = found else {
            return Ok(());
        };
        let id = self.new_id(store);
        let at_ms = self.nodes[store].physical_ms(self.now_ms);
        let reversal = CountCardUseReversal {
            id,
            use_id,
            card_id: card,
            member_id: member,
            reason: Some("退次".to_owned()),
            at_ms,
        };
        self.commit(store, vec![OpV1::CountCardUseReversal(reversal)])?;
        self.log(|| format!("s{store}: count card {card} use {use_id} given back"));
        Ok(())
    }
}
