//! Reports with known answers. A data set (3 stores in 2 regions, members with one same-phone
//! merge, recharges, sales with stored-value payments, refunds, coupons) is fed through the
//! hub's real ingest path; every report, segment and search is then asked over HTTP from a
//! hub router on 127.0.0.1 and compared with the same figure computed here by plain iteration
//! over the generated records. Also: regional scoping, phone masking, login, the audit log,
//! HQ adjustments, and xlsx export read back with calamine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chainsync_core::checkout::{Payment, PaymentMethod};
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{
    CouponRecord, CouponRedemption, CouponTemplate, Envelope, Op, OpV1, RefundRecord, SaleLine,
    SaleRecord,
};
use chainsync_core::rules::Rules;
use chainsync_core::{Fen, StoreId};
use hq_hub::reports::{day_of, day_start_ms, format_date};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const day: i64 = 86_400_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
struct Member {
    id: Uuid,
    phone: String,
    home: String,
    created_ms: i64,
    birthday_month: i64,
    tags: BTreeSet<String>,
}

#[derive(Clone)]
struct Sale {
    id: Uuid,
    store: String,
    member: Option<Uuid>,
    at_ms: i64,
    total: i64,
    tier: String,
    lines: Vec<(String, i64, i64)>,
    refunded: i64,
}

struct Refund {
    sale: Uuid,
    store: String,
    member: Option<Uuid>,
    at_ms: i64,
    amount: i64,
}

struct Entry {
    member: Uuid,
    origin: String,
    seq: u64,
    wall_ms: i64,
    kind: &'static str,
    account: Account,
    amount: i64,
}

struct Data {
    members: Vec<Member>,
    sales: Vec<Sale>,
    refunds: Vec<Refund>,
    entries: Vec<Entry>,
    /// (template, code, member, redemptions)
    coupons: Vec<(Uuid, String, Option<Uuid>, i64)>,
    template_name: HashMap<Uuid, String>,
}

impl Data {
    fn canonical(&self, id: Uuid) -> Uuid {
        let phone = &self.members.iter().find(|m| m.id == id).unwrap().phone;
        self.members
            .iter()
            .filter(|m| &m.phone == phone)
            .map(|m| m.id)
            .min()
            .unwrap()
    }
    fn member(&self, id: Uuid) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap()
    }
    fn canonical_members(&self) -> Vec<&Member> {
        self.members
            .iter()
            .filter(|m| self.canonical(m.id) == m.id)
            .collect()
    }
}

const stores: [(&str, &str); 3] = [("s1", "east"), ("s2", "east"), ("s3", "west")];
fn region(store: &str) -> &'static str {
    stores
        .iter()
        .find(|(s, _)| *s == store)
        .map(|(_, r)| *r)
        .unwrap_or("")
}

/// Per-origin op writers.
struct Writers {
    seq: HashMap<String, u64>,
    ops: HashMap<String, Vec<Envelope>>,
}

impl Writers {
    fn next_seq(&mut self, origin: &str) -> u64 {
        let seq = self.seq.entry(origin.to_owned()).or_insert(0);
        *seq += 1;
        *seq
    }
    fn push(&mut self, origin: &str, seq: u64, at_ms: i64, op: OpV1) {
        self.ops
            .entry(origin.to_owned())
            .or_default()
            .push(Envelope {
                origin: StoreId::parse(origin).unwrap(),
                seq,
                hlc: HlcTimestamp {
                    wall_ms: at_ms as u64,
                    counter: seq as u32,
                },
                op: Op::V1(op),
            });
    }
    fn emit(&mut self, origin: &str, at_ms: i64, op: OpV1) {
        let seq = self.next_seq(origin);
        self.push(origin, seq, at_ms, op);
    }
}

/// Generate the data set (chronological) and the operations that carry it.
fn generate(now: i64) -> (Data, Writers) {
    let rules = Rules::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut w = Writers {
        seq: HashMap::new(),
        ops: HashMap::new(),
    };
    let start = day_start_ms(day_of(now as u64) - 59);
    let mut data = Data {
        members: Vec::new(),
        sales: Vec::new(),
        refunds: Vec::new(),
        entries: Vec::new(),
        coupons: Vec::new(),
        template_name: HashMap::new(),
    };
    // Members: 40, registered over the first 40 days; #7 and #31 share a phone.
    let tag_pool = ["vip", "coffee", "student"];
    // Emitted in time order among the other events, so each store's sequence is chronological.
    let mut registrations: VecDeque<(&str, i64, OpV1)> = VecDeque::new();
    for i in 0..40u128 {
        let home = stores[(i % 3) as usize].0;
        let created = start + (i as i64) * day + 3_600_000;
        let phone = if i == 31 {
            format!("1380000{:04}", 7)
        } else {
            format!("1380000{i:04}")
        };
        let month = (i % 12) as i64 + 1;
        let mut tags = BTreeSet::new();
        tags.insert(tag_pool[(i % 3) as usize].to_owned());
        if i % 4 == 0 {
            tags.insert("vip".to_owned());
        }
        let profile = Profile {
            name: format!("会员{i}"),
            phone: phone.clone(),
            card_no: format!("C{i:06}"),
            birthday: Some(format!("1990-{month:02}-15")),
            home_store: Some(home.to_owned()),
            tags: tags.clone(),
            ..Default::default()
        };
        // Ids not in registration order, so the canonical of a merge is not the first one.
        let id = Uuid::from_u128(((i * 7919) % 1000 + 1) << 64 | i);
        let (_, change) =
            MemberDoc::create(&StoreId::parse(home).unwrap(), &profile, created as u64).unwrap();
        registrations.push_back((
            home,
            created,
            OpV1::MemberChange {
                member_id: id,
                change,
            },
        ));
        data.members.push(Member {
            id,
            phone,
            home: home.to_owned(),
            created_ms: created,
            birthday_month: month,
            tags,
        });
    }
    // Events over 60 days: recharges, sales (some with stored value), refunds.
    let mut balance: HashMap<Uuid, i64> = HashMap::new();
    let mut spend_log: Vec<(Uuid, i64, i64)> = Vec::new();
    let skus = [("A1", 12_000), ("B2", 35_000), ("C3", 8_000)];
    let mut next_id = 1_000_000u128;
    let mut t = start + 2 * 3_600_000;
    while t < now - 3_600_000 {
        t += (rng.below(5 * 3_600_000) + 600_000) as i64;
        if t >= now - 3_600_000 {
            break;
        }
        while registrations.front().is_some_and(|r| r.1 < t) {
            let (home, created, op) = registrations.pop_front().unwrap();
            w.emit(home, created, op);
        }
        let store = stores[rng.below(3) as usize].0;
        let known: Vec<Uuid> = data
            .members
            .iter()
            .filter(|m| m.created_ms < t && (m.id.as_u128() % 5 != 0 || t < start + 20 * day))
            .map(|m| m.id)
            .collect();
        let member = if known.is_empty() || rng.below(4) == 0 {
            None
        } else {
            Some(known[rng.below(known.len() as u64) as usize])
        };
        let roll = rng.below(10);
        next_id += 1;
        if roll == 0 {
            if let Some(member) = member {
                let amount = (rng.below(5) as i64 + 1) * 100_000;
                let canonical = data.canonical(member);
                w.emit(
                    store,
                    t,
                    OpV1::Ledger(LedgerEntry {
                        id: Uuid::from_u128(next_id),
                        origin: StoreId::parse(store).unwrap(),
                        seq: w.seq.get(store).copied().unwrap_or(0) + 1,
                        hlc: HlcTimestamp {
                            wall_ms: t as u64,
                            counter: (w.seq.get(store).copied().unwrap_or(0) + 1) as u32,
                        },
                        member_id: member,
                        kind: EntryKind::RechargePrincipal,
                        account: Account::Principal,
                        amount,
                        checkout_id: None,
                        reason: None,
                        rule_version: 1,
                    }),
                );
                let seq = *w.seq.get(store).unwrap();
                data.entries.push(Entry {
                    member,
                    origin: store.into(),
                    seq,
                    wall_ms: t,
                    kind: "recharge_principal",
                    account: Account::Principal,
                    amount,
                });
                *balance.entry(canonical).or_default() += amount;
            }
            continue;
        }
        if roll == 1 && !data.sales.is_empty() {
            // Refund half of a recent sale (at this store, later).
            let index = data.sales.len() - 1 - rng.below(data.sales.len().min(5) as u64) as usize;
            if data.sales[index].refunded == 0 {
                let sale = data.sales[index].clone();
                let amount = sale.total / 2;
                data.sales[index].refunded = amount;
                w.emit(
                    store,
                    t,
                    OpV1::SaleRefund(RefundRecord {
                        id: Uuid::from_u128(next_id),
                        sale_id: sale.id,
                        member_id: sale.member,
                        amount: Fen(amount),
                        reason: None,
                        at_ms: t as u64,
                    }),
                );
                data.refunds.push(Refund {
                    sale: sale.id,
                    store: store.into(),
                    member: sale.member,
                    at_ms: t,
                    amount,
                });
            }
            continue;
        }
        let mut lines = Vec::new();
        for _ in 0..rng.below(3) + 1 {
            let (sku, price) = skus[rng.below(3) as usize];
            let qty = rng.below(3) as i64 + 1;
            lines.push((sku.to_owned(), qty, qty * price));
        }
        let total: i64 = lines.iter().map(|l| l.2).sum();
        let tier = match member {
            Some(m) => {
                let c = data.canonical(m);
                let spent: i64 = spend_log
                    .iter()
                    .filter(|(who, at, _)| *who == c && *at >= t - 365 * day)
                    .map(|s| s.2)
                    .sum();
                rules.tier_for_spend(Fen(spent)).name.clone()
            }
            None => "普通".to_owned(),
        };
        let sale_id = Uuid::from_u128(next_id);
        let mut payments = vec![Payment {
            method: PaymentMethod::Cash,
            amount: Fen(total),
        }];
        if let Some(m) = member {
            let c = data.canonical(m);
            let available = balance.get(&c).copied().unwrap_or(0);
            if available >= total && rng.below(2) == 0 {
                payments = vec![Payment {
                    method: PaymentMethod::StoredValue,
                    amount: Fen(total),
                }];
                let seq = w.next_seq(store);
                w.push(
                    store,
                    seq,
                    t,
                    OpV1::Ledger(LedgerEntry {
                        id: Uuid::from_u128(next_id + (1 << 100)),
                        origin: StoreId::parse(store).unwrap(),
                        seq,
                        hlc: HlcTimestamp {
                            wall_ms: t as u64,
                            counter: seq as u32,
                        },
                        member_id: m,
                        kind: EntryKind::Spend,
                        account: Account::Principal,
                        amount: -total,
                        checkout_id: Some(sale_id),
                        reason: None,
                        rule_version: 1,
                    }),
                );
                data.entries.push(Entry {
                    member: m,
                    origin: store.into(),
                    seq,
                    wall_ms: t,
                    kind: "spend",
                    account: Account::Principal,
                    amount: -total,
                });
                *balance.entry(c).or_default() -= total;
            }
            spend_log.push((c, t, total));
        }
        w.emit(
            store,
            t,
            OpV1::Sale(SaleRecord {
                id: sale_id,
                member_id: member,
                lines: lines
                    .iter()
                    .map(|(sku, qty, amount)| SaleLine {
                        sku: sku.clone(),
                        name: sku.clone(),
                        qty: *qty,
                        unit_price: Fen(amount / qty),
                        amount: Fen(*amount),
                    })
                    .collect(),
                payments,
                subtotal: Fen(total),
                discount: Fen(0),
                total: Fen(total),
                points_earned: total / 100,
                tier: tier.clone(),
                rule_version: 1,
                at_ms: t as u64,
            }),
        );
        if let Some(m) = member {
            let seq = w.next_seq(store);
            w.push(
                store,
                seq,
                t,
                OpV1::Ledger(LedgerEntry {
                    id: Uuid::from_u128(next_id + (2 << 100)),
                    origin: StoreId::parse(store).unwrap(),
                    seq,
                    hlc: HlcTimestamp {
                        wall_ms: t as u64,
                        counter: seq as u32,
                    },
                    member_id: m,
                    kind: EntryKind::PointsEarn,
                    account: Account::Points,
                    amount: total / 100 + 1,
                    checkout_id: Some(sale_id),
                    reason: None,
                    rule_version: 1,
                }),
            );
            data.entries.push(Entry {
                member: m,
                origin: store.into(),
                seq,
                wall_ms: t,
                kind: "points_earn",
                account: Account::Points,
                amount: total / 100 + 1,
            });
        }
        data.sales.push(Sale {
            id: sale_id,
            store: store.into(),
            member,
            at_ms: t,
            total,
            tier,
            lines,
            refunded: 0,
        });
    }
    for (home, created, op) in registrations {
        w.emit(home, created, op);
    }
    (data, w)
}

/// Ingest in time order (as stores that sync often would deliver), in runs per store.
fn ingest_all(conn: &mut rusqlite::Connection, w: &Writers, now: u64) {
    let mut all: Vec<&Envelope> = w.ops.values().flatten().collect();
    all.sort_by_key(|e| (e.hlc.wall_ms, e.origin.as_str().to_owned(), e.seq));
    let mut run: Vec<Envelope> = Vec::new();
    for envelope in all {
        if run
            .last()
            .is_some_and(|last| last.origin != envelope.origin)
        {
            hq_hub::storage::ingest(conn, &run[0].origin.clone(), &run, now).unwrap();
            run.clear();
        }
        run.push(envelope.clone());
    }
    if !run.is_empty() {
        hq_hub::storage::ingest(conn, &run[0].origin.clone(), &run, now).unwrap();
    }
    for (store, _) in stores {
        // A batch delivered again changes nothing.
        let ops = &w.ops[store];
        hq_hub::storage::ingest(conn, &StoreId::parse(store).unwrap(), &ops[..10], now).unwrap();
    }
}

/// Coupons authored by HQ (templates, issues), redeemed at stores.
fn coupons(conn: &mut rusqlite::Connection, data: &mut Data, w: &mut Writers, now: i64) {
    for (n, name) in ["满100减10", "新客券"].iter().enumerate() {
        let template = Uuid::from_u128(9_000 + n as u128);
        data.template_name.insert(template, (*name).to_owned());
        hq_hub::storage::author(
            conn,
            OpV1::CouponTemplateUpsert(CouponTemplate {
                id: template,
                name: (*name).to_owned(),
                value: Fen(1_000),
                min_spend: Fen(0),
                online_only: false,
            }),
            now as u64,
        )
        .unwrap();
        for k in 0..6 {
            let member = data.members[(k * 5 + n) % data.members.len()].id;
            let member = if k == 5 { None } else { Some(member) };
            let code = format!("CP{n}{k}");
            hq_hub::storage::author(
                conn,
                OpV1::CouponIssue(CouponRecord {
                    code: code.clone(),
                    template_id: template,
                    member_id: member,
                }),
                now as u64,
            )
            .unwrap();
            let redemptions = ((k + n) % 3) as i64;
            for r in 0..redemptions {
                let store = stores[(k + r as usize) % 3].0;
                w.emit(
                    store,
                    now - 1_000,
                    OpV1::CouponRedeem(CouponRedemption {
                        id: Uuid::from_u128(50_000 + (n * 100 + k * 10) as u128 + r as u128),
                        code: code.clone(),
                        checkout_id: Uuid::from_u128(60_000 + (n * 100 + k) as u128),
                        member_id: member,
                    }),
                );
            }
            data.coupons.push((template, code, member, redemptions));
        }
    }
}

// ---- HTTP ----

struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    fn get(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_vec().unwrap())
    }
    fn json(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.get(path, token);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.post_keyed(path, token, None, body)
    }
    fn post_keyed(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let mut response = request
            .content_type("application/json")
            .send(body.to_string())
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    /// A report's rows keyed by the first `key_columns` columns.
    fn rows(&self, path: &str, token: &str, key_columns: usize) -> BTreeMap<Vec<String>, Vec<i64>> {
        let table = self.json(path, token);
        table_map(&table, key_columns)
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table_map(table: &Value, key_columns: usize) -> BTreeMap<Vec<String>, Vec<i64>> {
    let mut map = BTreeMap::new();
    for row in table["rows"].as_array().unwrap() {
        let row = row.as_array().unwrap();
        let key = row[..key_columns].iter().map(cell_text).collect();
        let values = row[key_columns..]
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        map.insert(key, values);
    }
    map
}

struct Hub {
    client: Client,
    tokens: HashMap<&'static str, String>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start(data_now: i64) -> (Hub, Data) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let mut conn = hq_hub::db::open_writer(&path).unwrap();
    for (store, region) in stores {
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, ?2, 0)",
            (store, region),
        )
        .unwrap();
    }
    let mut tokens = HashMap::new();
    for (name, role, region) in [
        ("admin", "admin", None),
        ("ops", "hq-ops", None),
        ("east", "regional-manager", Some("east")),
        ("west", "regional-manager", Some("west")),
        ("auditor", "auditor", None),
    ] {
        let token =
            hq_hub::users::add_user_with(&conn, name, role, region, Some(&format!("pw-{name}")), 0)
                .unwrap();
        tokens.insert(name, token);
    }
    let (mut data, mut writers) = generate(data_now);
    coupons(&mut conn, &mut data, &mut writers, data_now);
    ingest_all(&mut conn, &writers, data_now as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (log_grew, _) = tokio::sync::watch::channel(0);
    let state = hq_hub::http::HubState {
        reads: Arc::new(chainsync_replica::read::ReadPool::open(&path, 2).unwrap()),
        online: Arc::new(Mutex::new(HashMap::new())),
        rules: Arc::new(Rules::default()),
        writer: Arc::new(Mutex::new(conn)),
        log_grew,
        projection: Arc::new(Default::default()),
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        axum::serve(listener, hq_hub::http::router(state))
            .await
            .unwrap();
    });
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .proxy(None)
        .build();
    let client = Client {
        agent: ureq::Agent::new_with_config(config),
        base: format!("http://{address}"),
    };
    (
        Hub {
            client,
            tokens,
            _runtime: runtime,
            _dir: dir,
        },
        data,
    )
}

fn now_ms() -> i64 {
    hq_hub::now_ms() as i64
}

#[test]
fn reports_equal_plain_iteration_and_respect_roles() {
    let now = now_ms();
    let (hub, data) = start(now);
    let c = &hub.client;
    let admin = hub.tokens["admin"].as_str();
    let east = hub.tokens["east"].as_str();
    let auditor = hub.tokens["auditor"].as_str();
    let to_day = day_of(now as u64);
    let from_day = to_day - 59;
    let (from, to) = (format_date(from_day), format_date(to_day));
    let period = format!("from={from}&to={to}");
    let (start_ms, end_ms) = (day_start_ms(from_day), day_start_ms(to_day + 1));
    let in_period = |at: i64| at >= start_ms && at < end_ms;
    let customer = |m: &Option<Uuid>| if m.is_some() { "member" } else { "non_member" };

    // Sales by store, customer and tier.
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    let tier_of_sale: HashMap<Uuid, String> = data
        .sales
        .iter()
        .map(|s| {
            (
                s.id,
                if s.member.is_some() {
                    s.tier.clone()
                } else {
                    String::new()
                },
            )
        })
        .collect();
    for s in data.sales.iter().filter(|s| in_period(s.at_ms)) {
        let key = vec![
            s.store.clone(),
            customer(&s.member).into(),
            tier_of_sale[&s.id].clone(),
        ];
        let e = expected.entry(key).or_insert(vec![0; 4]);
        e[0] += 1;
        e[1] += s.total;
    }
    for r in data.refunds.iter().filter(|r| in_period(r.at_ms)) {
        let key = vec![
            r.store.clone(),
            customer(&r.member).into(),
            tier_of_sale[&r.sale].clone(),
        ];
        let e = expected.entry(key).or_insert(vec![0; 4]);
        e[2] += 1;
        e[3] += r.amount;
    }
    let expected: BTreeMap<Vec<String>, Vec<i64>> = expected
        .into_iter()
        .map(|(k, v)| {
            let basket = if v[0] > 0 { v[1] / v[0] } else { 0 };
            (k, vec![v[0], v[1], v[2], v[3], v[1] - v[3], basket])
        })
        .collect();
    let got = c.rows(
        &format!("/api/v1/reports/sales?{period}&by=store,customer,tier"),
        admin,
        3,
    );
    assert_eq!(got, expected, "sales by store, customer, tier");
    assert!(
        data.refunds.len() >= 3 && data.sales.len() > 100,
        "a real data set"
    );

    // Sales by region: the east manager sees only east.
    let by_region = c.rows(
        &format!("/api/v1/reports/sales?{period}&by=region"),
        admin,
        1,
    );
    let mut regions: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for s in data.sales.iter().filter(|s| in_period(s.at_ms)) {
        *regions
            .entry(vec![region(&s.store).to_owned()])
            .or_default() += s.total;
    }
    assert_eq!(
        by_region
            .iter()
            .map(|(k, v)| (k.clone(), v[1]))
            .collect::<BTreeMap<_, _>>(),
        regions
    );
    let east_sales = c.rows(&format!("/api/v1/reports/sales?{period}&by=store"), east, 1);
    assert!(!east_sales.is_empty());
    assert!(
        east_sales.keys().all(|k| region(&k[0]) == "east"),
        "{east_sales:?}"
    );

    // Categories (no product carries a category yet): quantities and line amounts per store.
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    for s in data.sales.iter().filter(|s| in_period(s.at_ms)) {
        for (_, qty, amount) in &s.lines {
            let e = expected
                .entry(vec![s.store.clone(), "uncategorized".into()])
                .or_insert(vec![0, 0]);
            e[0] += qty;
            e[1] += amount;
        }
    }
    let got = c.rows(
        &format!("/api/v1/reports/categories?{period}&by=store,category"),
        admin,
        2,
    );
    assert_eq!(got, expected, "categories");

    // Daily active members (merged duplicates count once).
    let mut active: BTreeMap<Vec<String>, HashSet<Uuid>> = BTreeMap::new();
    for s in data.sales.iter().filter(|s| in_period(s.at_ms)) {
        if let Some(m) = s.member {
            active
                .entry(vec![format_date(day_of(s.at_ms as u64))])
                .or_default()
                .insert(data.canonical(m));
        }
    }
    let expected: BTreeMap<_, _> = active
        .into_iter()
        .map(|(k, v)| (k, vec![v.len() as i64]))
        .collect();
    assert_eq!(
        c.rows(
            &format!("/api/v1/reports/active-members?{period}"),
            admin,
            1
        ),
        expected
    );

    // New members by home store (canonical members only).
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    for m in data.canonical_members() {
        if in_period(m.created_ms) {
            expected.entry(vec![m.home.clone()]).or_insert(vec![0])[0] += 1;
        }
    }
    assert_eq!(
        c.rows(
            &format!("/api/v1/reports/new-members?{period}&by=store"),
            admin,
            1
        ),
        expected
    );

    // Tier distribution through the rules.
    let rules = Rules::default();
    let net = |s: &Sale| s.total - s.refunded;
    let mut spend: HashMap<Uuid, i64> = HashMap::new();
    for s in &data.sales {
        if let Some(m) = s.member
            && s.at_ms >= end_ms - 365 * day
            && s.at_ms < end_ms
        {
            *spend.entry(data.canonical(m)).or_default() += net(s);
        }
    }
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    for m in data.canonical_members() {
        let tier = rules
            .tier_for_spend(Fen(spend.get(&m.id).copied().unwrap_or(0)))
            .name
            .clone();
        expected.entry(vec![tier]).or_insert(vec![0])[0] += 1;
    }
    assert_eq!(
        c.rows(&format!("/api/v1/reports/tiers?{period}"), admin, 1),
        expected
    );
    assert!(
        expected.len() >= 2,
        "more than one tier in the data: {expected:?}"
    );

    // Top customers.
    let mut window: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for s in data.sales.iter().filter(|s| in_period(s.at_ms)) {
        if let Some(m) = s.member {
            let e = window.entry(data.canonical(m)).or_default();
            e.0 += 1;
            e.1 += net(s);
        }
    }
    let mut ranked: Vec<(Uuid, (i64, i64))> = window.clone().into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.1
            .cmp(&a.1.1)
            .then(b.1.0.cmp(&a.1.0))
            .then(a.0.cmp(&b.0))
    });
    let top = c.json(
        &format!("/api/v1/reports/top-customers?{period}&limit=5"),
        admin,
    );
    let got: Vec<(String, i64, i64)> = top["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                cell_text(&r[1]),
                r[5].as_i64().unwrap(),
                r[6].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, i64, i64)> = ranked
        .iter()
        .take(5)
        .map(|(id, (v, s))| (id.to_string(), *v, *s))
        .collect();
    assert_eq!(got, want, "top customers");
    assert_eq!(
        top["rows"][0][3],
        Value::String(data.member(ranked[0].0).phone.clone())
    );

    // Liability by home store.
    let liability = |data: &Data| {
        let mut per: HashMap<Uuid, [i64; 3]> = HashMap::new();
        for e in &data.entries {
            let slot = match e.account {
                Account::Principal => 0,
                Account::Bonus => 1,
                Account::Points => 2,
            };
            per.entry(data.canonical(e.member)).or_default()[slot] += e.amount;
        }
        let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
        for (id, [p, b, pts]) in per {
            let e = expected
                .entry(vec![data.member(id).home.clone()])
                .or_insert(vec![0; 6]);
            e[0] += i64::from(p != 0 || b != 0 || pts != 0);
            e[1] += p;
            e[2] += b;
            e[3] += p + b;
            e[4] += pts;
            e[5] += pts;
        }
        expected
    };
    assert_eq!(
        c.rows("/api/v1/reports/liability?by=store", admin, 1),
        liability(&data)
    );

    // Settlement: first in, first out over principal, per canonical member.
    let mut flows: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    let mut groups: HashMap<Uuid, Vec<&Entry>> = HashMap::new();
    for e in data
        .entries
        .iter()
        .filter(|e| e.account == Account::Principal)
    {
        groups.entry(data.canonical(e.member)).or_default().push(e);
    }
    for entries in groups.values_mut() {
        entries.sort_by(|a, b| (a.wall_ms, a.seq, &a.origin).cmp(&(b.wall_ms, b.seq, &b.origin)));
        let mut lots: VecDeque<(String, i64)> = VecDeque::new();
        for e in entries.iter() {
            if e.amount > 0 {
                lots.push_back((e.origin.clone(), e.amount));
                continue;
            }
            let mut due = -e.amount;
            while due > 0 {
                let (store, left) = lots.front_mut().unwrap();
                let take = due.min(*left);
                if *store != e.origin && e.kind == "spend" && in_period(e.wall_ms) {
                    flows
                        .entry(vec![store.clone(), e.origin.clone()])
                        .or_insert(vec![0])[0] += take;
                }
                *left -= take;
                due -= take;
                if *left == 0 {
                    lots.pop_front();
                }
            }
        }
    }
    assert!(!flows.is_empty(), "stored value spent at another store");
    assert_eq!(
        c.rows(&format!("/api/v1/reports/settlement?{period}"), admin, 2),
        flows
    );
    let per_store = c.rows(
        &format!("/api/v1/reports/settlement?{period}&by=store"),
        admin,
        1,
    );
    let net_sum: i64 = per_store.values().map(|v| v[2]).sum();
    assert_eq!(net_sum, 0, "what stores owe equals what they are owed");

    // Coupons per template.
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    for (template, _, _, redemptions) in &data.coupons {
        let e = expected
            .entry(vec![
                template.to_string(),
                data.template_name[template].clone(),
            ])
            .or_insert(vec![0; 5]);
        e[0] += 1;
        e[1] += i64::from(*redemptions > 0);
        e[2] += redemptions;
        e[3] += i64::from(*redemptions > 1);
    }
    for v in expected.values_mut() {
        v[4] = v[1] * 10_000 / v[0];
    }
    assert_eq!(c.rows("/api/v1/reports/coupons", admin, 2), expected);

    // Segments: window = the last 30 days, dormant after 14 days, splits at the medians.
    let seg_from_day = to_day - 29;
    let (w_start, dormant_days) = (day_start_ms(seg_from_day), 14);
    let recent_start = end_ms - dormant_days * day;
    let mut first_visit: HashMap<Uuid, i64> = HashMap::new();
    let mut stats: HashMap<Uuid, (i64, i64, bool)> = HashMap::new();
    for s in &data.sales {
        let Some(m) = s.member else { continue };
        let id = data.canonical(m);
        let f = first_visit.entry(id).or_insert(s.at_ms);
        *f = (*f).min(s.at_ms);
        let e = stats.entry(id).or_default();
        if s.at_ms >= w_start && s.at_ms < end_ms {
            e.0 += 1;
            e.1 += net(s);
        }
        if s.at_ms >= recent_start && s.at_ms < end_ms {
            e.2 = true;
        }
    }
    let mut pre: Vec<(&Member, Option<&str>, (i64, i64))> = Vec::new();
    let (mut fs, mut ms) = (Vec::new(), Vec::new());
    for m in data.canonical_members() {
        let (f, amount, recent) = stats.get(&m.id).copied().unwrap_or_default();
        let class = if !recent {
            Some("dormant")
        } else if f == 1
            && first_visit
                .get(&m.id)
                .is_some_and(|first| *first >= w_start)
        {
            Some("new")
        } else {
            fs.push(f);
            ms.push(amount);
            None
        };
        pre.push((m, class, (f, amount)));
    }
    fs.sort();
    ms.sort();
    let f_split = if fs.is_empty() {
        1
    } else {
        fs[(fs.len() - 1) / 2]
    };
    let m_split = if ms.is_empty() {
        1
    } else {
        ms[(ms.len() - 1) / 2]
    };
    let mut expected: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
    let mut champions: Vec<(i64, Uuid)> = Vec::new();
    for (m, class, (f, amount)) in &pre {
        let class = class.unwrap_or(match (*f >= f_split, *amount >= m_split) {
            (true, true) => "champion",
            (false, true) => "big_spender",
            (true, false) => "frequent",
            (false, false) => "occasional",
        });
        if class == "champion" {
            champions.push((-amount, m.id));
        }
        expected
            .entry(vec![m.home.clone(), class.into()])
            .or_insert(vec![0])[0] += 1;
    }
    let seg_query = format!(
        "from={}&to={to}&dormant_days={dormant_days}",
        format_date(seg_from_day)
    );
    let segments = c.json(&format!("/api/v1/segments?{seg_query}&by=store"), admin);
    assert_eq!(segments["frequency_split"], f_split);
    assert_eq!(segments["amount_split_fen"], m_split);
    assert_eq!(
        table_map(&segments["counts"], 2),
        expected,
        "segments by store"
    );
    let classes: BTreeSet<String> = expected.keys().map(|k| k[1].clone()).collect();
    assert!(
        classes.len() >= 4,
        "the data set reaches several classes: {classes:?}"
    );
    champions.sort();
    let list = c.json(
        &format!("/api/v1/segments/champion/members?{seg_query}&per_page=500"),
        admin,
    );
    let got: Vec<String> = list["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    let want: Vec<String> = champions.iter().map(|(_, id)| id.to_string()).collect();
    assert_eq!(got, want, "champion members");
    let list = c.json(
        &format!("/api/v1/segments/champion/members?{seg_query}&per_page=500&region=west"),
        admin,
    );
    let got: Vec<String> = list["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    let want_west: Vec<String> = champions
        .iter()
        .filter(|(_, id)| region(&data.member(*id).home) == "west")
        .map(|(_, id)| id.to_string())
        .collect();
    assert_eq!(got, want_west, "champion members of one region");
    // The east manager's segments: only east stores, same counts as the chain's for them.
    let east_segments = c.json(&format!("/api/v1/segments?{seg_query}&by=store"), east);
    let east_counts = table_map(&east_segments["counts"], 2);
    let expected_east: BTreeMap<_, _> = expected
        .iter()
        .filter(|(k, _)| region(&k[0]) == "east")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(east_counts, expected_east);

    // Member search: at least 3 visits, most spend first; all-time visits and net spend.
    let mut all_time: HashMap<Uuid, (i64, i64, i64)> = HashMap::new();
    for s in &data.sales {
        if let Some(m) = s.member {
            let e = all_time.entry(data.canonical(m)).or_default();
            e.0 += 1;
            e.1 += net(s);
            e.2 = e.2.max(s.at_ms);
        }
    }
    let mut want: Vec<(i64, Uuid)> = data
        .canonical_members()
        .iter()
        .filter(|m| all_time.get(&m.id).is_some_and(|s| s.0 >= 3))
        .map(|m| (-all_time[&m.id].1, m.id))
        .collect();
    want.sort();
    let search = c.json(
        "/api/v1/member-search?visits_min=3&sort=spend&order=desc&per_page=500",
        admin,
    );
    let got: Vec<String> = search["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    assert_eq!(
        got,
        want.iter()
            .map(|(_, id)| id.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(search["total"], want.len());
    // Pages of 4 put together are the same list.
    let mut paged = Vec::new();
    for page in 1..=want.len().div_ceil(4) {
        let part = c.json(
            &format!("/api/v1/member-search?visits_min=3&sort=spend&per_page=4&page={page}"),
            admin,
        );
        paged.extend(
            part["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| cell_text(&r[0])),
        );
    }
    assert_eq!(paged, got);
    // Tag, birthday month, home store, last visit before.
    let cutoff = day_start_ms(to_day - 10);
    let mut want: Vec<String> = data
        .canonical_members()
        .iter()
        .filter(|m| m.tags.contains("vip") && m.home == "s1")
        .filter(|m| all_time.get(&m.id).is_none_or(|s| s.2 < cutoff))
        .map(|m| m.id.to_string())
        .collect();
    want.sort();
    let search = c.json(
        &format!(
            "/api/v1/member-search?tag=vip&store=s1&last_visit_before={}&sort=created&per_page=500",
            format_date(to_day - 10)
        ),
        admin,
    );
    let mut got: Vec<String> = search["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    got.sort();
    assert_eq!(got, want, "tag + store + last visit before");
    let march: Vec<String> = {
        let mut v: Vec<String> = data
            .canonical_members()
            .iter()
            .filter(|m| m.birthday_month == 3)
            .map(|m| m.id.to_string())
            .collect();
        v.sort();
        v
    };
    let search = c.json("/api/v1/member-search?birthday_month=3&per_page=500", admin);
    let mut got: Vec<String> = search["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    got.sort();
    assert_eq!(got, march);
    // Tier filter through the rules (spend over the last 365 days).
    let top_tier = rules.tiers.last().unwrap().name.clone();
    let mut want: Vec<String> = data
        .canonical_members()
        .iter()
        .filter(|m| {
            rules
                .tier_for_spend(Fen(all_time.get(&m.id).map(|s| s.1).unwrap_or(0)))
                .name
                == top_tier
        })
        .map(|m| m.id.to_string())
        .collect();
    want.sort();
    let search = c.json(
        &format!(
            "/api/v1/member-search?tier={}&per_page=500",
            urlencode(&top_tier)
        ),
        admin,
    );
    let mut got: Vec<String> = search["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| cell_text(&r[0]))
        .collect();
    got.sort();
    assert_eq!(got, want, "tier filter");

    // Regional manager: search and member routes never show another region's members.
    let east_search = c.json("/api/v1/member-search?per_page=500", east);
    let rows = east_search["rows"].as_array().unwrap();
    let east_members = data
        .canonical_members()
        .iter()
        .filter(|m| region(&m.home) == "east")
        .count();
    assert_eq!(rows.len(), east_members);
    assert!(rows.iter().all(|r| region(&cell_text(&r[4])) == "east"));
    let west_member = data
        .canonical_members()
        .into_iter()
        .find(|m| m.home == "s3")
        .unwrap()
        .id;
    let (status, _) = c.get(&format!("/api/v1/members/{west_member}"), east);
    assert_eq!(status, 404);
    let (status, _) = c.get(&format!("/api/v1/members/{west_member}/ledger"), east);
    assert_eq!(status, 404);
    let (status, _) = c.get(&format!("/api/v1/members/{west_member}"), admin);
    assert_eq!(status, 200);
    let stores_seen = c.json("/api/v1/stores", east);
    let ids: Vec<String> = stores_seen["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| cell_text(&s["id"]))
        .collect();
    assert_eq!(ids, vec!["s1", "s2"]);
    let five = c.json("/api/v1/members?limit=5", east);
    assert_eq!(
        five["members"].as_array().unwrap().len(),
        5,
        "a full page of the region"
    );
    let list = c.json("/api/v1/members?limit=500", east);
    assert!(
        list["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| region(m["home_store"].as_str().unwrap()) == "east")
    );
    for report in [
        "top-customers",
        "liability?by=store",
        "new-members?by=store",
        "tiers?by=store",
    ] {
        let sep = if report.contains('?') { '&' } else { '?' };
        let table = c.json(&format!("/api/v1/reports/{report}{sep}{period}"), east);
        let column = table["columns"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c == "store" || c == "home_store")
            .unwrap();
        for row in table["rows"].as_array().unwrap() {
            assert_eq!(region(&cell_text(&row[column])), "east", "{report}: {row}");
        }
    }
    let settlement = c.json(
        &format!("/api/v1/reports/settlement?{period}&by=store"),
        east,
    );
    for row in settlement["rows"].as_array().unwrap() {
        assert_eq!(region(&cell_text(&row[0])), "east");
    }

    // Phones: full for admin and hq-ops, masked for regional managers and auditors.
    let phone = |token: &str| {
        let found = c.json(
            "/api/v1/member-search?store=s1&sort=created&order=asc&per_page=1",
            token,
        );
        cell_text(&found["rows"][0][2])
    };
    let first_s1 = data
        .members
        .iter()
        .filter(|m| m.home == "s1")
        .map(|m| data.canonical(m.id))
        .next()
        .unwrap();
    let full = data.member(first_s1).phone.clone();
    assert_eq!(phone(admin), full);
    assert_eq!(phone(&hub.tokens["ops"]), full);
    let masked = format!("{}****{}", &full[..3], &full[7..]);
    assert_eq!(phone(east), masked);
    assert_eq!(phone(auditor), masked);
    let member = c.json(&format!("/api/v1/members/{first_s1}"), auditor);
    assert_eq!(member["phone"], Value::String(masked.clone()));
    let member = c.json(&format!("/api/v1/members/{first_s1}"), admin);
    assert_eq!(member["phone"], Value::String(full.clone()));

    // Exports: CSV equals the JSON report; xlsx read back equals the CSV; both audited.
    let report_path = format!("/api/v1/reports/sales?{period}&by=store,customer");
    let json = c.json(&report_path, admin);
    let (status, csv_bytes) = c.get(&format!("{report_path}&format=csv"), admin);
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        json["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(cell_text)
            .collect::<Vec<_>>()
    );
    let csv_rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let json_rows: Vec<Vec<String>> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(cell_text).collect())
        .collect();
    assert_eq!(csv_rows, json_rows);
    let (status, xlsx_bytes) = c.get(&format!("{report_path}&format=xlsx"), admin);
    assert_eq!(status, 200);
    let xlsx_rows = read_xlsx(&xlsx_bytes);
    assert_eq!(xlsx_rows[0], header);
    assert_eq!(xlsx_rows[1..].to_vec(), csv_rows);
    // A streamed list export (member search) as CSV and xlsx.
    let (status, csv_bytes) = c.get("/api/v1/member-search?format=csv&sort=created", east);
    assert_eq!(status, 200);
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let csv_rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(csv_rows.len(), east_members);
    assert!(
        csv_rows.iter().all(|r| r[2].contains("****")),
        "exports are masked too"
    );
    let (status, xlsx_bytes) = c.get("/api/v1/member-search?format=xlsx&sort=created", east);
    assert_eq!(status, 200);
    assert_eq!(read_xlsx(&xlsx_bytes)[1..].to_vec(), csv_rows);
    let (status, _) = c.get("/api/v1/member-search?format=csv&birthday_month=13", admin);
    assert_eq!(status, 422);
    let audit = c.json("/api/v1/audit?action=export", admin);
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{audit}");
    assert!(
        entries.iter().any(
            |e| e["user"] == "east" && e["subject"].as_str().unwrap().contains("member-search")
        )
    );
    assert!(
        entries
            .iter()
            .any(|e| e["user"] == "admin" && e["detail"].as_str().unwrap().contains("xlsx"))
    );
    let (status, _) = c.get("/api/v1/audit", east);
    assert_eq!(status, 403);
    assert_eq!(
        c.json("/api/v1/audit", auditor)["entries"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Manual adjustment: admin/hq-ops only, written as an HQ ledger entry, audited.
    let target = first_s1;
    let body = serde_json::json!({"account": "stored_value", "amount": 1234, "reason": "goodwill"});
    let (status, _) = c.post(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(auditor),
        &body,
    );
    assert_eq!(status, 403, "an auditor changes nothing");
    let (status, _) = c.post(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(east),
        &body,
    );
    assert_eq!(status, 403);
    let (status, reply) = c.post_keyed(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(&hub.tokens["ops"]),
        Some("goodwill-1"),
        &body,
    );
    assert_eq!(status, 201, "{reply}");
    // A retry with the same key (a lost answer) gets the same answer and adjusts nothing again
    // (the ledger and liability checks below see one adjustment); the key with another body
    // is refused.
    let (status, repeat) = c.post_keyed(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(&hub.tokens["ops"]),
        Some("goodwill-1"),
        &body,
    );
    assert_eq!((status, &repeat), (201, &reply));
    let (status, refused) = c.post_keyed(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(&hub.tokens["ops"]),
        Some("goodwill-1"),
        &serde_json::json!({"account": "stored_value", "amount": 4321, "reason": "goodwill"}),
    );
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let (status, reply) = c.post(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(admin),
        &serde_json::json!({"account": "points", "amount": -1_000_000, "reason": "too much"}),
    );
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (422, Value::from("insufficient_points"))
    );
    let (status, _) = c.post(
        &format!("/api/v1/members/{target}/adjustments"),
        Some(admin),
        &serde_json::json!({"account": "points", "amount": 5, "reason": " "}),
    );
    assert_eq!(status, 422);
    let ledger = c.json(&format!("/api/v1/members/{target}/ledger"), admin);
    let adjustments: Vec<&Value> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "stored_value_adjust")
        .collect();
    assert_eq!(adjustments.len(), 1, "{ledger}");
    let entry = adjustments[0];
    assert_eq!(
        (
            entry["origin"].as_str(),
            entry["amount"].as_i64(),
            entry["reason"].as_str()
        ),
        (Some("hq"), Some(1234), Some("goodwill"))
    );
    let audit = c.json("/api/v1/audit?action=adjustment", admin);
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["user"], "ops");
    assert_eq!(entries[0]["subject"], Value::String(target.to_string()));
    assert!(entries[0]["detail"].as_str().unwrap().contains("goodwill"));
    let mut after = liability(&data);
    let home = data.member(target).home.clone();
    let row = after.get_mut(&vec![home]).unwrap();
    row[1] += 1234;
    row[3] += 1234;
    assert_eq!(
        c.rows("/api/v1/reports/liability?by=store", admin, 1),
        after
    );

    // Login: sessions work like tokens; wrong passwords do not.
    let (status, session) = c.post(
        "/api/v1/login",
        None,
        &serde_json::json!({"name": "east", "password": "pw-east"}),
    );
    assert_eq!(status, 200);
    assert_eq!(session["region"], "east");
    let token = session["token"].as_str().unwrap();
    assert_eq!(c.json("/api/v1/me", token)["role"], "regional-manager");
    let (status, _) = c.post(
        "/api/v1/login",
        None,
        &serde_json::json!({"name": "east", "password": "pw-west"}),
    );
    assert_eq!(status, 401);
    let (status, _) = c.post(
        "/api/v1/login",
        None,
        &serde_json::json!({"name": "nobody", "password": "x"}),
    );
    assert_eq!(status, 401);
    let (status, _) = c.get("/api/v1/reports/sales", "hq_not_a_token");
    assert_eq!(status, 401);
    let (status, _) = c.get("/api/v1/reports/nonsense", admin);
    assert_eq!(status, 404);
    let (status, _) = c.get("/api/v1/reports/sales?by=planet", admin);
    assert_eq!(status, 422);
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn read_xlsx(bytes: &[u8]) -> Vec<Vec<String>> {
    use calamine::{Reader, Xlsx};
    let mut workbook: Xlsx<_> = Xlsx::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let range = workbook.worksheet_range("report").unwrap();
    range
        .rows()
        .map(|row| {
            row.iter()
                .map(|cell| match cell {
                    calamine::Data::Float(f) => format!("{}", *f as i64),
                    calamine::Data::Int(i) => i.to_string(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect()
}

/// The index tables do not count an operation twice, and follow a merge that happens after
/// the sales (the second registration with the same phone arrives last).
#[test]
fn index_is_idempotent_and_follows_late_merges() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = hq_hub::db::open_writer(&dir.path().join("hub.db")).unwrap();
    conn.execute(
        "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES ('a', 'a', 'r', 0), ('b', 'b', 'r', 0)",
        [],
    )
    .unwrap();
    let now = now_ms();
    let mut w = Writers {
        seq: HashMap::new(),
        ops: HashMap::new(),
    };
    let profile = |phone: &str, home: &str| Profile {
        name: "张三".into(),
        phone: phone.into(),
        card_no: format!("K{home}0001"),
        home_store: Some(home.into()),
        ..Default::default()
    };
    let (small, big) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let (_, change) = MemberDoc::create(
        &StoreId::parse("b").unwrap(),
        &profile("13900000001", "b"),
        1,
    )
    .unwrap();
    w.emit(
        "b",
        now - 5_000,
        OpV1::MemberChange {
            member_id: big,
            change,
        },
    );
    let sale = |id: u128, member: Uuid, total: i64| {
        OpV1::Sale(SaleRecord {
            id: Uuid::from_u128(id),
            member_id: Some(member),
            lines: vec![],
            payments: vec![],
            subtotal: Fen(total),
            discount: Fen(0),
            total: Fen(total),
            points_earned: 0,
            tier: "普通".into(),
            rule_version: 1,
            at_ms: (now - 4_000) as u64,
        })
    };
    w.emit("b", now - 4_000, sale(10, big, 500));
    w.emit("b", now - 4_000, sale(11, big, 700));
    let (_, change) = MemberDoc::create(
        &StoreId::parse("a").unwrap(),
        &profile("13900000001", "a"),
        1,
    )
    .unwrap();
    w.emit(
        "a",
        now - 3_000,
        OpV1::MemberChange {
            member_id: small,
            change,
        },
    );
    w.emit("a", now - 3_000, sale(12, small, 100));
    let b_ops = w.ops["b"].clone();
    hq_hub::storage::ingest(&mut conn, &StoreId::parse("b").unwrap(), &b_ops, now as u64).unwrap();
    let stats = |conn: &rusqlite::Connection| -> Vec<(String, i64, i64)> {
        let mut s = conn
            .prepare("SELECT member_id, visits, spend_fen FROM report_members ORDER BY member_id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(stats(&conn), vec![(big.to_string(), 2, 1200)]);
    // The same operations applied again through the projection: nothing counts twice.
    for envelope in &b_ops {
        let tx = conn.transaction().unwrap();
        let before = hq_hub::reports::index::before_apply(&tx, envelope).unwrap();
        let new = chainsync_replica::project::apply_remote(&tx, &StoreId::hub(), envelope).unwrap();
        assert!(!new);
        if new {
            hq_hub::reports::index::after_apply(&tx, envelope, before).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_eq!(stats(&conn), vec![(big.to_string(), 2, 1200)]);
    let a_ops = w.ops["a"].clone();
    hq_hub::storage::ingest(&mut conn, &StoreId::parse("a").unwrap(), &a_ops, now as u64).unwrap();
    // Merged: one canonical row (the smaller id) with the whole group's figures.
    assert_eq!(stats(&conn), vec![(small.to_string(), 3, 1300)]);
    let home: String = conn
        .query_row("SELECT home_store FROM report_members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(home, "a");
    let daily: (i64, i64) = conn
        .query_row(
            "SELECT SUM(orders), SUM(sales_fen) FROM report_daily",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(daily, (3, 1300));
}

/// A hub database from before the report tables is indexed once when opened: the rebuilt
/// tables equal the ones the projection kept.
#[test]
fn report_tables_are_built_for_an_older_database() {
    let now = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let mut conn = hq_hub::db::open_writer(&path).unwrap();
    for (store, region) in stores {
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, ?2, 0)",
            (store, region),
        )
        .unwrap();
    }
    let (_, writers) = generate(now);
    ingest_all(&mut conn, &writers, now as u64);
    let tables = [
        "report_member_stats",
        "report_members",
        "report_member_tags",
        "report_daily",
        "report_daily_sku",
        "report_member_day",
    ];
    let dump = |conn: &rusqlite::Connection| -> Vec<String> {
        let mut all = Vec::new();
        for table in tables {
            let mut s = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let columns = s.column_count();
            let rows = s
                .query_map([], |r| {
                    let mut row = String::from(table);
                    for i in 0..columns {
                        row.push_str(&format!(" {:?}", r.get_ref(i)?));
                    }
                    Ok(row)
                })
                .unwrap();
            all.extend(rows.map(Result::unwrap));
        }
        all.sort();
        all
    };
    let kept = dump(&conn);
    assert!(kept.len() > 500, "{}", kept.len());
    for table in tables {
        conn.execute(&format!("DELETE FROM {table}"), []).unwrap();
    }
    conn.execute("DELETE FROM meta WHERE key = 'report_index_v1'", [])
        .unwrap();
    drop(conn);
    let conn = hq_hub::db::open_writer(&path).unwrap();
    let rebuilt = dump(&conn);
    let missing: Vec<&String> = kept
        .iter()
        .filter(|r| !rebuilt.contains(r))
        .take(5)
        .collect();
    let extra: Vec<&String> = rebuilt
        .iter()
        .filter(|r| !kept.contains(r))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    assert_eq!(rebuilt.len(), kept.len());
}

/// A refund that reaches the hub before its sale is counted under the sale's tier once the
/// sale arrives.
#[test]
fn a_refund_before_its_sale_moves_to_the_sale_tier() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = hq_hub::db::open_writer(&dir.path().join("hub.db")).unwrap();
    conn.execute(
        "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES ('a', 'a', 'r', 0), ('b', 'b', 'r', 0)",
        [],
    )
    .unwrap();
    let now = now_ms();
    let mut w = Writers {
        seq: HashMap::new(),
        ops: HashMap::new(),
    };
    let member = Uuid::from_u128(7);
    let profile = Profile {
        name: "王五".into(),
        phone: "13900000009".into(),
        card_no: "K0009".into(),
        home_store: Some("a".into()),
        ..Default::default()
    };
    let (_, change) = MemberDoc::create(&StoreId::parse("a").unwrap(), &profile, 1).unwrap();
    w.emit(
        "a",
        now - 9_000,
        OpV1::MemberChange {
            member_id: member,
            change,
        },
    );
    let sale_id = Uuid::from_u128(70);
    w.emit(
        "a",
        now - 8_000,
        OpV1::Sale(SaleRecord {
            id: sale_id,
            member_id: Some(member),
            lines: vec![],
            payments: vec![],
            subtotal: Fen(1_000),
            discount: Fen(0),
            total: Fen(1_000),
            points_earned: 0,
            tier: "黄金".into(),
            rule_version: 1,
            at_ms: (now - 8_000) as u64,
        }),
    );
    w.emit(
        "b",
        now - 7_000,
        OpV1::SaleRefund(RefundRecord {
            id: Uuid::from_u128(71),
            sale_id,
            member_id: Some(member),
            amount: Fen(400),
            reason: None,
            at_ms: (now - 7_000) as u64,
        }),
    );
    let (a, b) = (StoreId::parse("a").unwrap(), StoreId::parse("b").unwrap());
    hq_hub::storage::ingest(&mut conn, &a, &w.ops["a"][..1], now as u64).unwrap();
    hq_hub::storage::ingest(&mut conn, &b, &w.ops["b"], now as u64).unwrap();
    hq_hub::storage::ingest(&mut conn, &a, &w.ops["a"], now as u64).unwrap();
    let mut s = conn
        .prepare(
            "SELECT store, tier, orders, sales_fen, refunds, refund_fen FROM report_daily
             WHERE orders <> 0 OR refunds <> 0 OR sales_fen <> 0 OR refund_fen <> 0
             ORDER BY store",
        )
        .unwrap();
    let rows: Vec<(String, String, i64, i64, i64, i64)> = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a".to_owned(), "黄金".to_owned(), 1, 1_000, 0, 0),
            ("b".to_owned(), "黄金".to_owned(), 0, 0, 1, 400),
        ]
    );
    let spend: i64 = conn
        .query_row("SELECT spend_fen FROM report_members", [], |r| r.get(0))
        .unwrap();
    assert_eq!(spend, 600);

    drop(s);
    // A manual points adjustment made at store b is in the hub's audit log, once.
    let adjustment = |seq: u64| Envelope {
        origin: b.clone(),
        seq,
        hlc: HlcTimestamp {
            wall_ms: (now - 500) as u64,
            counter: 0,
        },
        op: Op::V1(OpV1::Ledger(LedgerEntry {
            id: Uuid::from_u128(72),
            origin: b.clone(),
            seq,
            hlc: HlcTimestamp {
                wall_ms: (now - 500) as u64,
                counter: 0,
            },
            member_id: member,
            kind: EntryKind::PointsAdjust,
            account: Account::Points,
            amount: 50,
            checkout_id: None,
            reason: Some("birthday gift".into()),
            rule_version: 1,
        })),
    };
    hq_hub::storage::ingest(&mut conn, &b, &[adjustment(2)], now as u64).unwrap();
    hq_hub::storage::ingest(&mut conn, &b, &[adjustment(2)], now as u64).unwrap();
    let logged = hq_hub::audit::list(&conn, Some("adjustment"), 10).unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(
        (logged[0].user.as_str(), logged[0].role.as_str()),
        ("store:b", "store")
    );
    assert_eq!(logged[0].subject, member.to_string());
    assert!(logged[0].detail.contains("birthday gift"));
}

/// The hub's tier report (`tiers_as_of`: one pass over the sales or the points entries, then
/// the pure rule per member) and a member's tier as every replica reads it
/// (`read::member_tier`: the member group's own entries) agree for each tier metric and
/// downgrade policy, on the data set above (same-phone merges, refunds, points earned at
/// sales), at instants where the policies differ.
#[test]
fn the_tier_report_agrees_with_each_members_tier_under_every_policy() {
    use chainsync_core::tiers::{TierDowngrade, TierMetric};
    let now = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = hq_hub::db::open_writer(&dir.path().join("hub.db")).unwrap();
    for (store, region) in stores {
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, ?2, 0)",
            (store, region),
        )
        .unwrap();
    }
    let (_data, writers) = generate(now);
    ingest_all(&mut conn, &writers, now as u64);
    let members: Vec<Uuid> = conn
        .prepare("SELECT id FROM members WHERE merged_into IS NULL")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(|id| Uuid::parse_str(&id.unwrap()).unwrap())
        .collect();
    assert!(members.len() >= 30, "{}", members.len());
    let mut by_policy: HashMap<(TierMetric, TierDowngrade, i64), Vec<String>> = HashMap::new();
    for metric in [TierMetric::Spend, TierMetric::Points] {
        for downgrade in [
            TierDowngrade::Rolling,
            TierDowngrade::PeriodEnd,
            TierDowngrade::Never,
        ] {
            let mut rules = Rules {
                tier_metric: metric,
                tier_downgrade: downgrade,
                ..Rules::default()
            };
            for (tier, (yuan, points)) in
                rules
                    .tiers
                    .iter_mut()
                    .zip([(0, 0), (300, 300), (1_500, 1_500)])
            {
                tier.spend_threshold = Fen(yuan * 100);
                tier.points_threshold = points;
            }
            rules.validate().unwrap();
            // Tomorrow, and 400 days on (no entries after now: the rolling window has
            // emptied, a period has turned).
            for ahead_days in [1, 400] {
                let as_of = now + ahead_days * day;
                let (report, lowest) =
                    hq_hub::reports::members::tiers_as_of(&conn, &rules, as_of).unwrap();
                let mut tiers = Vec::new();
                for id in &members {
                    let read = chainsync_replica::read::member_tier(
                        &conn,
                        *id,
                        &rules,
                        (as_of - 1) as u64,
                    )
                    .unwrap()
                    .name;
                    assert_eq!(
                        report.get(id).unwrap_or(&lowest),
                        &read,
                        "{metric:?} {downgrade:?} +{ahead_days} days, member {id}"
                    );
                    tiers.push(read);
                }
                by_policy.insert((metric, downgrade, ahead_days), tiers);
            }
        }
    }
    // Not vacuous: tiers above the lowest exist, and the policies give different tiers.
    for metric in [TierMetric::Spend, TierMetric::Points] {
        let tomorrow = &by_policy[&(metric, TierDowngrade::Rolling, 1)];
        assert!(
            tomorrow.iter().any(|t| t != "普通"),
            "{metric:?}: {tomorrow:?}"
        );
        assert!(tomorrow.iter().collect::<HashSet<_>>().len() >= 2);
        let rolling = &by_policy[&(metric, TierDowngrade::Rolling, 400)];
        let never = &by_policy[&(metric, TierDowngrade::Never, 400)];
        assert!(
            rolling.iter().all(|t| t == "普通"),
            "{metric:?}: {rolling:?}"
        );
        assert_ne!(
            rolling, never,
            "{metric:?}: the policies must differ somewhere"
        );
    }
}
