//! What each write does. Every function runs inside the writer's transaction (a savepoint per
//! request), produces replicated operations through [`Local::emit`], projects them, and returns
//! the JSON reply. An error leaves nothing behind: the writer rolls the savepoint back.

use chainsync_core::allowance::{OfflineSpend, SpendRequest};
use chainsync_core::checkout::{self, Movement, Payment, PaymentMethod, PricedLine};
use chainsync_core::hlc::{Hlc, HlcTimestamp};
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{
    Gender, MemberDoc, Profile, ProfilePatch, normalize_phone, validate_card_no,
};
use chainsync_core::op::{
    CouponRedemption, Envelope, Op, OpV1, ProductRecord, SaleLine, SaleRecord,
};
use chainsync_core::rules::Rules;
use chainsync_core::{Fen, IdGenerator, StoreId, limits};
use rusqlite::{Connection, OptionalExtension};
use std::collections::BTreeSet;
use uuid::Uuid;

use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::views::{
    AmountInput, CheckoutView, MemberPatch, NewCheckout, NewMember, NewProduct, NewRecharge,
    NewRefund, RechargeView,
};
use chainsync_replica::{project, read};

/// The writer's view of this store: identity, rules, and the counters that stamp operations.
pub struct Local {
    pub store: StoreId,
    pub rules: Rules,
    /// Sell (and send out) below zero stock, flagged (true, the default), or refuse with
    /// 409 `insufficient_stock` (store.toml `allow_negative_stock`).
    pub allow_negative_stock: bool,
    /// The store's time zone (seconds east of UTC) for every local-date rule.
    pub utc_offset_seconds: i32,
    hlc: Hlc,
    next_seq: u64,
    ids: IdGenerator,
}

/// Counters saved before a request, restored if it fails (so sequences have no gaps).
#[derive(Clone, Copy)]
pub struct Mark {
    hlc: HlcTimestamp,
    next_seq: u64,
}

impl Local {
    /// Continue the store's sequence and clock from what is on disk.
    pub fn load(conn: &Connection, store: StoreId, rules: Rules) -> rusqlite::Result<Local> {
        let (max_seq, wall_ms, counter): (i64, i64, i64) = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0),
                    COALESCE(MAX(hlc_wall_ms), 0),
                    COALESCE((SELECT MAX(hlc_counter) FROM ops WHERE hlc_wall_ms =
                              (SELECT MAX(hlc_wall_ms) FROM ops)), 0)
             FROM ops WHERE origin = ?1",
            [store.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let last = HlcTimestamp {
            wall_ms: wall_ms.max(0) as u64,
            counter: u32::try_from(counter.max(0)).unwrap_or(u32::MAX),
        };
        Ok(Local {
            store,
            rules,
            allow_negative_stock: true,
            utc_offset_seconds: chainsync_core::engagement::default_utc_offset_seconds,
            hlc: Hlc::starting_after(last),
            next_seq: max_seq.max(0) as u64 + 1,
            ids: IdGenerator::new(),
        })
    }

    /// Take up the newest rule set this replica holds (HQ's, relayed), if it changed.
    pub fn refresh_rules(&mut self, conn: &Connection) -> Result<(), ApiError> {
        if chainsync_replica::program::rules_version(conn)? != self.rules.version {
            self.rules = chainsync_replica::program::rules(conn)?;
        }
        Ok(())
    }

    /// Highest sequence number given to one of our own operations.
    pub fn own_seq_max(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Merge a timestamp received from another replica into our clock.
    pub fn observe(&mut self, remote: HlcTimestamp, now_ms: u64) {
        if let Err(e) = self.hlc.observe(remote, now_ms) {
            tracing::warn!(error = %e, "ignoring a remote clock reading");
        }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            hlc: self.hlc.last(),
            next_seq: self.next_seq,
        }
    }

    pub fn reset(&mut self, mark: Mark) {
        self.hlc = Hlc::starting_after(mark.hlc);
        self.next_seq = mark.next_seq;
    }

    pub fn new_id(&mut self, now_ms: u64) -> Result<Uuid, ApiError> {
        let random = crate::random_bytes::<10>().map_err(ApiError::internal)?;
        Ok(self.ids.next(now_ms, random))
    }

    fn stamp(&mut self, now_ms: u64) -> Result<(u64, HlcTimestamp), ApiError> {
        let hlc = self.hlc.now(now_ms).map_err(ApiError::internal)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok((seq, hlc))
    }

    /// Stamp an operation, record it in `ops`, and return it.
    pub fn emit(&mut self, conn: &Connection, now_ms: u64, op: OpV1) -> Result<Envelope, ApiError> {
        let (seq, hlc) = self.stamp(now_ms)?;
        let envelope = Envelope {
            origin: self.store.clone(),
            seq,
            hlc,
            op: Op::V1(op),
        };
        if !project::insert_op(conn, &envelope)? {
            return Err(ApiError::internal(format!("operation {seq} written twice")));
        }
        Ok(envelope)
    }

    /// Write one ledger movement for a member (as its own operation) and project it.
    pub(crate) fn emit_entry(
        &mut self,
        conn: &Connection,
        now_ms: u64,
        member_id: Uuid,
        movement: Movement,
        checkout_id: Option<Uuid>,
        reason: Option<String>,
    ) -> Result<LedgerEntry, ApiError> {
        let id = self.new_id(now_ms)?;
        self.emit_entry_with_id(conn, now_ms, id, member_id, movement, checkout_id, reason)
    }

    /// [`Local::emit_entry`] with a given id (a derived one, for once-only entries that two
    /// stores may decide while apart: see `chainsync_core::id::derived_id`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn emit_entry_with_id(
        &mut self,
        conn: &Connection,
        now_ms: u64,
        id: Uuid,
        member_id: Uuid,
        movement: Movement,
        checkout_id: Option<Uuid>,
        reason: Option<String>,
    ) -> Result<LedgerEntry, ApiError> {
        let (seq, hlc) = self.stamp(now_ms)?;
        let entry = LedgerEntry {
            id,
            origin: self.store.clone(),
            seq,
            hlc,
            member_id,
            kind: movement.kind,
            account: movement.account,
            amount: movement.amount,
            checkout_id,
            reason,
            rule_version: self.rules.version,
        };
        entry.validate().map_err(ApiError::internal)?;
        let envelope = Envelope {
            origin: self.store.clone(),
            seq,
            hlc,
            op: Op::V1(OpV1::Ledger(entry.clone())),
        };
        project::insert_op(conn, &envelope)?;
        project::project_ledger(conn, &entry)?;
        Ok(entry)
    }
}

fn member_view(
    conn: &Connection,
    local: &Local,
    id: Uuid,
    now_ms: u64,
) -> Result<chainsync_replica::views::MemberView, ApiError> {
    read::member(conn, id, &local.rules, now_ms, local.utc_offset_seconds)?
        .ok_or_else(ApiError::unknown_member)
}

fn parse_gender(text: &str) -> Result<Gender, ApiError> {
    Gender::parse(text)
        .ok_or_else(|| ApiError::invalid_field("gender must be male, female or other"))
}

fn clean_optional(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn phone_taken(conn: &Connection, phone: &str, except: Option<Uuid>) -> rusqlite::Result<bool> {
    let found: Option<String> = conn
        .query_row(
            "SELECT id FROM members WHERE phone = ?1 AND id != ?2 LIMIT 1",
            (phone, except.map(|id| id.to_string()).unwrap_or_default()),
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

fn card_taken(conn: &Connection, card_no: &str, except: Option<Uuid>) -> rusqlite::Result<bool> {
    let found: Option<String> = conn
        .query_row(
            "SELECT id FROM members WHERE card_no = ?1 AND id != ?2 LIMIT 1",
            (card_no, except.map(|id| id.to_string()).unwrap_or_default()),
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

fn duplicate_phone() -> ApiError {
    ApiError::new(
        409,
        "duplicate_phone",
        "a member with this phone number already exists",
    )
}

fn duplicate_card_no() -> ApiError {
    ApiError::new(
        409,
        "duplicate_card_no",
        "this card number is already in use",
    )
}

/// A free 12-digit card number.
fn new_card_no(conn: &Connection) -> Result<String, ApiError> {
    for _ in 0..8 {
        let bytes = crate::random_bytes::<8>().map_err(ApiError::internal)?;
        let number = 100_000_000_000 + u64::from_le_bytes(bytes) % 900_000_000_000;
        let card_no = number.to_string();
        if !card_taken(conn, &card_no, None)? {
            return Ok(card_no);
        }
    }
    Err(ApiError::internal("could not find a free card number"))
}

pub fn register_member(
    conn: &Connection,
    local: &mut Local,
    request: NewMember,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let phone = normalize_phone(&request.phone)?;
    if phone_taken(conn, &phone, None)? {
        return Err(duplicate_phone());
    }
    let referrer = match clean_optional(request.referrer) {
        Some(text) => Some(crate::engagement::find_referrer(conn, &text)?),
        None => None,
    };
    let card_no = match clean_optional(request.card_no) {
        Some(card_no) => {
            validate_card_no(&card_no)?;
            if card_taken(conn, &card_no, None)? {
                return Err(duplicate_card_no());
            }
            card_no
        }
        None => new_card_no(conn)?,
    };
    let gender = clean_optional(request.gender)
        .map(|g| parse_gender(&g))
        .transpose()?;
    let profile = Profile {
        name: request.name.trim().to_owned(),
        phone,
        card_no,
        gender,
        birthday: clean_optional(request.birthday),
        email: clean_optional(request.email),
        address: clean_optional(request.address),
        note: clean_optional(request.note),
        home_store: Some(local.store.to_string()),
        tags: request
            .tags
            .iter()
            .map(|t| t.trim().to_owned())
            .collect::<BTreeSet<_>>(),
    };
    let member_id = local.new_id(now_ms)?;
    let (mut doc, change) = MemberDoc::create(&local.store, &profile, now_ms)?;
    let envelope = local.emit(conn, now_ms, OpV1::MemberChange { member_id, change })?;
    let origin = envelope.origin.clone();
    project::project_member(conn, member_id, &mut doc, &origin, envelope.hlc.wall_ms)?;
    crate::program::signup_gifts(conn, local, member_id, now_ms)?;
    if let Some(referrer) = referrer {
        crate::engagement::record_referral(conn, local, member_id, referrer, now_ms)?;
    }
    let view = member_view(conn, local, member_id, now_ms)?;
    crate::outbox::enqueue(
        conn,
        &format!("member_registered:{member_id}"),
        "member_registered",
        Some(member_id),
        &serde_json::json!({"member_id": member_id, "name": view.name, "card_no": view.card_no}),
        now_ms,
    )?;
    Reply::new(201, &view)
}

pub fn patch_member(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: MemberPatch,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let saved: Option<Vec<u8>> = conn
        .query_row(
            "SELECT doc FROM members WHERE id = ?1",
            [member_id.to_string()],
            |row| row.get(0),
        )
        .optional()?;
    let saved = saved.ok_or_else(ApiError::unknown_member)?;
    let mut doc = MemberDoc::load(&local.store, &saved)?;
    let phone = request.phone.as_deref().map(normalize_phone).transpose()?;
    if let Some(phone) = &phone
        && phone_taken(conn, phone, Some(member_id))?
    {
        return Err(duplicate_phone());
    }
    if let Some(card_no) = &request.card_no {
        validate_card_no(card_no)?;
        if card_taken(conn, card_no, Some(member_id))? {
            return Err(duplicate_card_no());
        }
    }
    let gender = match request.gender {
        None => None,
        Some(value) => Some(
            clean_optional(value)
                .map(|g| parse_gender(&g))
                .transpose()?,
        ),
    };
    let patch = ProfilePatch {
        name: request.name,
        phone,
        card_no: request.card_no,
        gender,
        birthday: request.birthday.map(clean_optional),
        email: request.email.map(clean_optional),
        address: request.address.map(clean_optional),
        note: request.note.map(clean_optional),
        tags: request.tags.map(|tags| tags.into_iter().collect()),
    };
    if let Some(change) = doc.edit(&patch, now_ms)? {
        let envelope = local.emit(conn, now_ms, OpV1::MemberChange { member_id, change })?;
        project::project_member(conn, member_id, &mut doc, &envelope.origin, now_ms)?;
    }
    Reply::new(200, &member_view(conn, local, member_id, now_ms)?)
}

/// A money amount from outside: present, an integer, and in 1..=`amount_fen_max`.
fn positive_amount(input: AmountInput, what: &str) -> Result<Fen, ApiError> {
    match input.0 {
        Some(amount) if (1..=limits::amount_fen_max).contains(&amount) => Ok(Fen(amount)),
        _ => Err(ApiError::invalid_amount(format!(
            "{what} must be a whole number of 分 from 1 to {}",
            limits::amount_fen_max
        ))),
    }
}

pub fn recharge(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewRecharge,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let amount = positive_amount(request.amount_fen, "amount_fen")?;
    let method = request.method.as_deref().unwrap_or("cash");
    if !matches!(method, "cash" | "external") {
        return Err(ApiError::invalid_field("method must be cash or external"));
    }
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let bonus = local
        .rules
        .recharge_bonus_for(amount)
        .map_err(|_| ApiError::invalid_amount("too large"))?;
    crate::program::check_prepaid_cap(conn, &local.rules, member_id, amount, bonus)?;
    let reason = Some(format!("recharge ({method})"));
    let principal_entry = local.emit_entry(
        conn,
        now_ms,
        member_id,
        Movement {
            kind: EntryKind::RechargePrincipal,
            account: Account::Principal,
            amount: amount.0,
        },
        None,
        reason.clone(),
    )?;
    if bonus > Fen::ZERO {
        local.emit_entry(
            conn,
            now_ms,
            member_id,
            Movement {
                kind: EntryKind::RechargeBonus,
                account: Account::Bonus,
                amount: bonus.0,
            },
            None,
            reason,
        )?;
    }
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    crate::outbox::enqueue(
        conn,
        &format!("recharge:{}", principal_entry.id),
        "recharge",
        Some(member_id),
        &serde_json::json!({"entry_id": principal_entry.id, "amount_fen": amount.0, "bonus_fen": bonus.0}),
        now_ms,
    )?;
    Reply::new(
        201,
        &RechargeView {
            id: principal_entry.id,
            member_id,
            amount_fen: amount.0,
            bonus_fen: bonus.0,
            balance_fen: balances.principal.0.saturating_add(balances.bonus.0),
            principal_fen: balances.principal.0,
            bonus_balance_fen: balances.bonus.0,
        },
    )
}

fn validate_sku(sku: &str) -> Result<(), ApiError> {
    let ok = !sku.is_empty()
        && sku.chars().count() <= limits::sku_chars_max
        && sku.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "sku must be 1 to 64 characters without spaces",
        ))
    }
}

pub fn upsert_product(
    conn: &Connection,
    local: &mut Local,
    request: NewProduct,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    validate_sku(&request.sku)?;
    let name = request.name.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > limits::name_chars_max
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field("name must be 1 to 64 characters"));
    }
    let price = match request.price_fen.0 {
        Some(price) if (0..=limits::amount_fen_max).contains(&price) => Fen(price),
        _ => {
            return Err(ApiError::invalid_amount(
                "price_fen must be a whole number of 分, 0 or more",
            ));
        }
    };
    let existed = read::product(conn, &request.sku)?.is_some();
    let record = ProductRecord {
        sku: request.sku,
        name,
        price,
        active: true,
    };
    let envelope = local.emit(conn, now_ms, OpV1::ProductUpsert(record.clone()))?;
    project::project_product(conn, &record, envelope.hlc, &envelope.origin)?;
    let view = read::product(conn, &record.sku)?
        .ok_or_else(|| ApiError::internal("product written but not found"))?;
    Reply::new(if existed { 200 } else { 201 }, &view)
}

fn parse_method(text: &str) -> Result<PaymentMethod, ApiError> {
    match text {
        "cash" => Ok(PaymentMethod::Cash),
        "external" => Ok(PaymentMethod::External),
        "stored_value" => Ok(PaymentMethod::StoredValue),
        "points" => Ok(PaymentMethod::Points),
        _ => Err(ApiError::invalid_field(
            "payment method must be cash, external, stored_value or points",
        )),
    }
}

/// Who vouched for a checkout's spend of stored value, points and coupons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Not enrolled with a hub: this store is the whole chain.
    Standalone,
    /// The hub authorized it against the chain-wide state.
    Online,
    /// The hub could not be asked (link down or no answer in time): offline rules apply.
    Offline,
}

fn offline_limit(message: String) -> ApiError {
    ApiError::new(422, "offline_limit_exceeded", message)
}

/// Check and count an offline spend against HQ's allowance.
fn authorize_offline(
    conn: &Connection,
    member_id: Uuid,
    request: SpendRequest,
) -> Result<(), ApiError> {
    let policy = read::allowance_policy(conn)?;
    let used: Option<(i64, i64)> = conn
        .query_row(
            "SELECT stored_value_fen, points FROM offline_spend WHERE member_id = ?1",
            [member_id.to_string()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let exposure: i64 = conn.query_row(
        "SELECT COALESCE(SUM(stored_value_fen + points), 0) FROM offline_spend",
        [],
        |row| row.get(0),
    )?;
    let mut tracker = OfflineSpend {
        per_member: Default::default(),
        exposure,
    };
    if let Some((stored_value, points)) = used {
        tracker.per_member.insert(
            member_id,
            SpendRequest {
                stored_value: Fen(stored_value),
                points,
            },
        );
    }
    tracker
        .authorize(&policy, member_id, request)
        .map_err(|refusal| offline_limit(refusal.to_string()))?;
    let counted = tracker
        .per_member
        .get(&member_id)
        .copied()
        .unwrap_or_default();
    conn.execute(
        "INSERT INTO offline_spend (member_id, stored_value_fen, points) VALUES (?1, ?2, ?3)
         ON CONFLICT (member_id) DO UPDATE SET stored_value_fen = excluded.stored_value_fen,
             points = excluded.points",
        (
            member_id.to_string(),
            counted.stored_value.0,
            counted.points,
        ),
    )?;
    Ok(())
}

pub fn checkout(
    conn: &Connection,
    local: &mut Local,
    request: NewCheckout,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    checkout_as(conn, local, request, None, Authority::Standalone, now_ms)
}

/// A checkout whose id may be chosen beforehand (it was sent to the hub for authorization).
pub fn checkout_as(
    conn: &Connection,
    local: &mut Local,
    request: NewCheckout,
    checkout_id: Option<Uuid>,
    authority: Authority,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    if request.lines.len() > limits::checkout_lines_max {
        return Err(ApiError::invalid_field(format!(
            "at most {} lines",
            limits::checkout_lines_max
        )));
    }
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut categories = Vec::with_capacity(request.lines.len());
    for (index, line) in request.lines.iter().enumerate() {
        let qty = match line.qty.0 {
            Some(qty) if (1..=limits::line_qty_max).contains(&qty) => qty,
            _ => {
                return Err(ApiError::new(
                    422,
                    "invalid_qty",
                    format!(
                        "line {index}: qty must be a whole number from 1 to {}",
                        limits::line_qty_max
                    ),
                ));
            }
        };
        let product = read::product(conn, &line.sku)?
            .filter(|p| p.active)
            .ok_or_else(|| {
                ApiError::new(
                    422,
                    "unknown_sku",
                    format!("line {index}: unknown SKU {:?}", line.sku),
                )
            })?;
        // A bundle is priced as one line at its own price; a member pays the member price.
        categories.push(product.category.clone());
        lines.push(PricedLine {
            unit_price: chainsync_core::catalog::unit_price(
                Fen(product.price_fen),
                product.member_price_fen.map(Fen),
                request.member_id.is_some(),
            ),
            sku: product.sku,
            name: product.name,
            qty,
        });
    }
    let mut payments = Vec::with_capacity(request.payments.len());
    for payment in &request.payments {
        let method = parse_method(&payment.method)?;
        let amount = positive_amount(payment.amount_fen, "payment amount_fen")?;
        payments.push(Payment { method, amount });
    }
    let member_id = match request.member_id {
        Some(id) => Some(read::canonical_member(conn, id)?.ok_or_else(ApiError::unknown_member)?),
        None => None,
    };
    let (tier, balances) = match member_id {
        Some(member_id) => {
            let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
            // The tier before this checkout: a checkout that crosses a threshold is priced in
            // the old tier, the next one in the new tier.
            let tier = read::member_tier(conn, member_id, &local.rules, now_ms)?;
            (Some(tier), Some(balances))
        }
        None => (None, None),
    };
    let coupons = crate::coupons::for_checkout(
        conn,
        local.store.as_str(),
        &request.coupons,
        member_id,
        &lines,
        tier.as_ref(),
        authority,
        local.utc_offset_seconds,
        now_ms,
    )?;
    let earn = chainsync_core::rules::EarnContext {
        store: local.store.as_str().to_owned(),
        local_minute: chainsync_core::rules::local_minute(now_ms, local.utc_offset_seconds)
            .unwrap_or_default(),
        categories,
    };
    let quote = checkout::quote_earning(
        &local.rules,
        &lines,
        tier.as_ref(),
        balances,
        &payments,
        &coupons,
        &earn,
    )?;
    if authority == Authority::Offline
        && let Some(member_id) = member_id
    {
        let spend = spend_of(&payments, local.rules.point_value_fen);
        if !spend.is_empty() {
            authorize_offline(conn, member_id, spend)?;
        }
    }

    let sale_id = match checkout_id {
        Some(id) => id,
        None => local.new_id(now_ms)?,
    };
    let sale_lines = lines
        .iter()
        .map(|line| {
            Ok(SaleLine {
                sku: line.sku.clone(),
                name: line.name.clone(),
                qty: line.qty,
                unit_price: line.unit_price,
                amount: line
                    .unit_price
                    .checked_mul(line.qty)
                    .map_err(|_| ApiError::invalid_amount("overflow"))?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let sale = SaleRecord {
        id: sale_id,
        member_id,
        lines: sale_lines,
        payments,
        subtotal: quote.subtotal,
        discount: quote.discount,
        total: quote.total,
        points_earned: quote.points_earned,
        tier: quote.tier_name.clone(),
        rule_version: local.rules.version,
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::Sale(sale.clone()))?;
    project::project_sale(conn, &sale, &envelope.origin)?;
    if member_id.is_some() && quote.points_earned > 0 {
        let points = chainsync_core::op::SalePoints {
            sale_id,
            rule_version: local.rules.version,
            lines: quote.line_points.clone(),
        };
        local.emit(conn, now_ms, OpV1::SalePoints(points.clone()))?;
        chainsync_replica::program::project_sale_points(conn, &points)?;
    }
    let stock_below_zero = crate::stock::write_sale(conn, local, &sale, now_ms)?;
    for code in &request.coupons {
        let redemption = CouponRedemption {
            id: local.new_id(now_ms)?,
            code: code.clone(),
            checkout_id: sale_id,
            member_id,
        };
        let envelope = local.emit(conn, now_ms, OpV1::CouponRedeem(redemption.clone()))?;
        project::project_redemption(conn, &redemption, &envelope.origin)?;
    }
    if let Some(member_id) = member_id {
        for movement in &quote.movements {
            local.emit_entry(conn, now_ms, member_id, *movement, Some(sale_id), None)?;
        }
    }
    let coupons_issued = match member_id {
        Some(member_id) => {
            crate::coupons::spend_rewards(conn, local, member_id, sale_id, quote.total, now_ms)?
        }
        None => Vec::new(),
    };
    if let Some(member_id) = member_id {
        crate::engagement::referral_on_purchase(conn, local, member_id, quote.total, now_ms)?;
    }
    let mut view: CheckoutView = read::sale_view(local.store.as_str(), &sale, false);
    view.stock_below_zero = stock_below_zero;
    read::add_line_points(conn, &mut view)?;
    if let Some(member_id) = member_id {
        let after = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
        view.balance_fen = Some(after.principal.0.saturating_add(after.bonus.0));
        view.points = Some(after.points);
        crate::outbox::enqueue(
            conn,
            &format!("checkout:{sale_id}"),
            "checkout",
            Some(member_id),
            &serde_json::json!({
                "checkout_id": sale_id, "total_fen": view.total_fen,
                "points_earned": view.points_earned, "points_used": view.points_used,
            }),
            now_ms,
        )?;
    }
    let mut reply = Reply::new(201, &view)?;
    if !coupons_issued.is_empty() {
        reply.body["coupons_issued"] = serde_json::json!(coupons_issued);
    }
    Ok(reply)
}

pub fn refund(
    conn: &Connection,
    local: &mut Local,
    sale_id: Uuid,
    request: NewRefund,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let reason = clean_optional(request.reason);
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > limits::note_chars_max)
    {
        return Err(ApiError::invalid_field("reason is too long"));
    }
    let found: Option<(Vec<u8>, String)> = conn
        .query_row(
            "SELECT body, origin FROM sales WHERE id = ?1",
            [sale_id.to_string()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (body, origin) =
        found.ok_or_else(|| ApiError::new(404, "unknown_checkout", "no checkout with this id"))?;
    // Only the store that made a sale refunds it: its refunds are then all written here, one
    // after another, so a sale can never be refunded twice, even by stores that cannot reach
    // each other.
    if origin != local.store.as_str() {
        return Err(ApiError::new(
            409,
            "refund_at_selling_store",
            format!("this checkout was made at store {origin}: it can only be refunded there"),
        ));
    }
    let sale: SaleRecord = postcard::from_bytes(&body).map_err(ApiError::internal)?;
    crate::refunds::refund_sale(conn, local, sale, reason, request.lines, now_ms)
}

/// What a checkout's payments take from the member's stored value and points.
pub fn spend_of(payments: &[Payment], point_value_fen: i64) -> SpendRequest {
    let mut spend = SpendRequest::default();
    for payment in payments {
        match payment.method {
            PaymentMethod::StoredValue => {
                spend.stored_value = Fen(spend.stored_value.0.saturating_add(payment.amount.0));
            }
            PaymentMethod::Points => {
                spend.points = spend
                    .points
                    .saturating_add(payment.amount.0 / point_value_fen.max(1));
            }
            PaymentMethod::Cash | PaymentMethod::External => {}
        }
    }
    spend
}
