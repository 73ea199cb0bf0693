//! HQ's product catalog: catalog items (SKU, barcode, name, category, price, member price,
//! active flag) and bundles (套餐: an item made of other SKUs with quantities, sold at its own
//! price), and the merge rule that decides what a replica shows for a SKU.
//!
//! Two operations write a SKU: the original `ProductUpsert` (SKU, name, price, active; still
//! authored by stores one version older and by a store's `POST /api/v1/products`) and
//! `CatalogItemUpsert` (the whole item, authored by HQ). A product is two last-writer-wins
//! registers, each ordered by [`Stamp`] (HLC time, then origin store):
//! - the **base** register (name, price, active) takes the newest operation of either kind;
//! - the **catalog** register (barcode, category, member price, bundle components) takes the
//!   newest `CatalogItemUpsert` only, so an old-style upsert never erases HQ's category.
//!
//! Merge law: each register holds the value of its maximum stamp among the operations it
//! takes. Maximum is commutative, associative and idempotent, and stamps of distinct operations
//! differ (an origin never reuses an HLC time), so [`merge`] folded over any order, with any
//! duplicates, gives the same state (`merge_is_order_and_duplicate_independent` below).

use serde::{Deserialize, Serialize};

use crate::hlc::HlcTimestamp;
use crate::limits;
use crate::money::Fen;
use crate::op::ProductRecord;

/// Longest barcode (EAN-13, UPC, internal codes), in characters.
pub const barcode_chars_max: usize = 32;
/// Longest category name, in characters.
pub const category_chars_max: usize = 32;
/// Most component SKUs in one bundle.
pub const bundle_components_max: usize = 20;
/// Largest quantity of one component in a bundle.
pub const bundle_component_qty_max: i64 = 1_000;

/// One component of a bundle: `qty` units of `sku` (a plain item, never another bundle).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleComponent {
    pub sku: String,
    pub qty: i64,
}

/// A catalog item as HQ sets it. With `components` it is a bundle sold at `price`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    pub sku: String,
    pub barcode: Option<String>,
    pub name: String,
    pub category: Option<String>,
    /// Price for everyone.
    pub price: Fen,
    /// Price for a member, when it differs (a member never pays more than `price`).
    pub member_price: Option<Fen>,
    pub active: bool,
    /// Empty for a plain item; sorted by SKU, each SKU once, for a bundle.
    pub components: Vec<BundleComponent>,
}

/// Why a catalog item is refused (the field it names and the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("sku must be 1 to {max} characters without spaces", max = limits::sku_chars_max)]
    Sku,
    #[error("barcode must be 1 to {barcode_chars_max} characters without spaces")]
    Barcode,
    #[error("name must be 1 to {max} characters", max = limits::name_chars_max)]
    Name,
    #[error("category must be 1 to {category_chars_max} characters")]
    Category,
    #[error("price must be 0 to {max} 分", max = limits::amount_fen_max)]
    Price,
    #[error("member price must be 0 to {max} 分", max = limits::amount_fen_max)]
    MemberPrice,
    #[error("a bundle has at most {bundle_components_max} components")]
    TooManyComponents,
    #[error("component {sku:?} is not a valid SKU")]
    ComponentSku { sku: String },
    #[error("component {sku:?}: quantity must be 1 to {bundle_component_qty_max}")]
    ComponentQty { sku: String },
    #[error("component {sku:?} is listed twice")]
    DuplicateComponent { sku: String },
    #[error("a bundle cannot contain itself")]
    SelfComponent,
}

impl ItemError {
    /// The field (CSV column and JSON field) the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ItemError::Sku => "sku",
            ItemError::Barcode => "barcode",
            ItemError::Name => "name",
            ItemError::Category => "category",
            ItemError::Price => "price",
            ItemError::MemberPrice => "member_price",
            ItemError::TooManyComponents
            | ItemError::ComponentSku { .. }
            | ItemError::ComponentQty { .. }
            | ItemError::DuplicateComponent { .. }
            | ItemError::SelfComponent => "bundle",
        }
    }

    /// A stable snake_case code for the reason.
    pub fn code(&self) -> &'static str {
        match self {
            ItemError::Sku | ItemError::Barcode | ItemError::Name | ItemError::Category => {
                "invalid_text"
            }
            ItemError::Price | ItemError::MemberPrice => "invalid_price",
            ItemError::TooManyComponents => "too_many_components",
            ItemError::ComponentSku { .. } => "invalid_text",
            ItemError::ComponentQty { .. } => "invalid_qty",
            ItemError::DuplicateComponent { .. } => "duplicate_component",
            ItemError::SelfComponent => "self_component",
        }
    }
}

/// A SKU as every route accepts it: 1 to 64 characters, no whitespace or control characters.
pub fn valid_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.chars().count() <= limits::sku_chars_max
        && sku.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

fn valid_text(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.chars().count() <= max
        && !text.chars().any(char::is_control)
        && text.trim() == text
}

impl CatalogItem {
    /// Check the item's own shape (what refers to other SKUs is checked by the author, who
    /// knows the catalog). Components must already be sorted and unique (see [`normalize`]).
    pub fn validate(&self) -> Result<(), ItemError> {
        if !valid_sku(&self.sku) {
            return Err(ItemError::Sku);
        }
        if let Some(barcode) = &self.barcode
            && (!valid_text(barcode, barcode_chars_max) || barcode.contains(char::is_whitespace))
        {
            return Err(ItemError::Barcode);
        }
        if !valid_text(&self.name, limits::name_chars_max) {
            return Err(ItemError::Name);
        }
        if let Some(category) = &self.category
            && !valid_text(category, category_chars_max)
        {
            return Err(ItemError::Category);
        }
        let money = |fen: Fen| (0..=limits::amount_fen_max).contains(&fen.0);
        if !money(self.price) {
            return Err(ItemError::Price);
        }
        if self.member_price.is_some_and(|fen| !money(fen)) {
            return Err(ItemError::MemberPrice);
        }
        if self.components.len() > bundle_components_max {
            return Err(ItemError::TooManyComponents);
        }
        for (index, component) in self.components.iter().enumerate() {
            if !valid_sku(&component.sku) {
                return Err(ItemError::ComponentSku {
                    sku: component.sku.clone(),
                });
            }
            if component.sku == self.sku {
                return Err(ItemError::SelfComponent);
            }
            if !(1..=bundle_component_qty_max).contains(&component.qty) {
                return Err(ItemError::ComponentQty {
                    sku: component.sku.clone(),
                });
            }
            if index > 0 && self.components[index - 1].sku >= component.sku {
                return Err(ItemError::DuplicateComponent {
                    sku: component.sku.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn is_bundle(&self) -> bool {
        !self.components.is_empty()
    }
}

/// Sort components by SKU; a SKU listed twice is an error (not summed: it is likely a typo).
pub fn normalize(mut components: Vec<BundleComponent>) -> Result<Vec<BundleComponent>, ItemError> {
    components.sort_by(|a, b| a.sku.cmp(&b.sku));
    for pair in components.windows(2) {
        if pair[0].sku == pair[1].sku {
            return Err(ItemError::DuplicateComponent {
                sku: pair[0].sku.clone(),
            });
        }
    }
    Ok(components)
}

/// What a cart line costs: a member pays the member price when it is set and lower.
pub fn unit_price(price: Fen, member_price: Option<Fen>, is_member: bool) -> Fen {
    match member_price {
        Some(member_price) if is_member => member_price.min(price),
        _ => price,
    }
}

/// Why a yuan amount (`12.50`) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum YuanError {
    #[error("not a number of yuan (like 12.50)")]
    NotANumber,
    #[error("below zero")]
    Negative,
    #[error("more than 2 decimals")]
    TooPrecise,
    #[error("more than {max} 分", max = limits::amount_fen_max)]
    TooLarge,
}

impl YuanError {
    pub fn code(&self) -> &'static str {
        match self {
            YuanError::NotANumber | YuanError::TooPrecise => "bad_number",
            YuanError::Negative => "negative_price",
            YuanError::TooLarge => "too_large",
        }
    }
}

/// Parse yuan with up to 2 decimals (`12`, `12.5`, `12.50`) into 分, exactly (no floats).
pub fn parse_yuan(text: &str) -> Result<Fen, YuanError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (digits, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(YuanError::NotANumber);
    }
    if digits.ends_with('.') {
        return Err(YuanError::NotANumber);
    }
    if fraction.len() > 2 {
        return Err(YuanError::TooPrecise);
    }
    // At most 10 whole digits before anything is multiplied, so nothing can overflow.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 10 {
        return Err(if negative {
            YuanError::Negative
        } else {
            YuanError::TooLarge
        });
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| YuanError::NotANumber)?
    };
    let cents: i64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().map_err(|_| YuanError::NotANumber)? * 10,
        _ => fraction.parse().map_err(|_| YuanError::NotANumber)?,
    };
    let fen = whole * 100 + cents;
    if negative && fen != 0 {
        return Err(YuanError::Negative);
    }
    if fen > limits::amount_fen_max {
        return Err(YuanError::TooLarge);
    }
    Ok(Fen(fen))
}

/// 分 as yuan with 2 decimals (`1250` → `12.50`), the format [`parse_yuan`] reads.
pub fn format_yuan(fen: Fen) -> String {
    let sign = if fen.0 < 0 { "-" } else { "" };
    let abs = fen.0.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// The order of writes to one SKU: HLC time, then origin store id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub hlc: HlcTimestamp,
    pub origin: String,
}

/// A write to a SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProductWrite<'a> {
    /// `OpV1::ProductUpsert`: name, price and active only.
    Product(&'a ProductRecord),
    /// `OpV1::CatalogItemUpsert`: the whole item.
    Item(&'a CatalogItem),
}

/// The catalog register of a product (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogFields {
    pub barcode: Option<String>,
    pub category: Option<String>,
    pub member_price: Option<Fen>,
    pub components: Vec<BundleComponent>,
}

/// What a replica shows for a SKU: both registers with the stamps that set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductState {
    pub sku: String,
    pub name: String,
    pub price: Fen,
    pub active: bool,
    pub base_stamp: Stamp,
    pub catalog: CatalogFields,
    /// None until a `CatalogItemUpsert` reached this SKU.
    pub catalog_stamp: Option<Stamp>,
}

/// Apply one write to the state held for its SKU (None: nothing yet). Returns None when the
/// write changes nothing (it is older than what both registers hold).
pub fn merge(
    current: Option<&ProductState>,
    stamp: &Stamp,
    write: ProductWrite<'_>,
) -> Option<ProductState> {
    let (sku, name, price, active, catalog) = match write {
        ProductWrite::Product(record) => {
            (&record.sku, &record.name, record.price, record.active, None)
        }
        ProductWrite::Item(item) => (
            &item.sku,
            &item.name,
            item.price,
            item.active,
            Some(CatalogFields {
                barcode: item.barcode.clone(),
                category: item.category.clone(),
                member_price: item.member_price,
                components: item.components.clone(),
            }),
        ),
    };
    let Some(current) = current else {
        return Some(ProductState {
            sku: sku.clone(),
            name: name.clone(),
            price,
            active,
            base_stamp: stamp.clone(),
            catalog_stamp: catalog.as_ref().map(|_| stamp.clone()),
            catalog: catalog.unwrap_or_default(),
        });
    };
    let mut next = current.clone();
    let mut changed = false;
    if *stamp > current.base_stamp {
        next.name = name.clone();
        next.price = price;
        next.active = active;
        next.base_stamp = stamp.clone();
        changed = true;
    }
    if let Some(catalog) = catalog
        && current
            .catalog_stamp
            .as_ref()
            .is_none_or(|held| stamp > held)
    {
        next.catalog = catalog;
        next.catalog_stamp = Some(stamp.clone());
        changed = true;
    }
    changed.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(sku: &str) -> CatalogItem {
        CatalogItem {
            sku: sku.into(),
            barcode: Some("6901234567892".into()),
            name: "咖啡".into(),
            category: Some("饮料".into()),
            price: Fen(1_500),
            member_price: Some(Fen(1_200)),
            active: true,
            components: vec![],
        }
    }

    #[test]
    fn items_are_checked_field_by_field() {
        assert_eq!(item("A1").validate(), Ok(()));
        let mut bad = item("A 1");
        assert_eq!(bad.validate(), Err(ItemError::Sku));
        bad = item("A1");
        bad.price = Fen(-1);
        assert_eq!(bad.validate().map_err(|e| e.field()), Err("price"));
        bad = item("A1");
        bad.name = "x".repeat(65);
        assert_eq!(bad.validate(), Err(ItemError::Name));
        bad = item("A1");
        bad.components = vec![BundleComponent {
            sku: "A1".into(),
            qty: 1,
        }];
        assert_eq!(bad.validate(), Err(ItemError::SelfComponent));
        bad.components = vec![BundleComponent {
            sku: "B1".into(),
            qty: 0,
        }];
        assert_eq!(bad.validate().map_err(|e| e.code()), Err("invalid_qty"));
        let twice = vec![
            BundleComponent {
                sku: "B".into(),
                qty: 1,
            },
            BundleComponent {
                sku: "B".into(),
                qty: 2,
            },
        ];
        assert!(matches!(
            normalize(twice),
            Err(ItemError::DuplicateComponent { .. })
        ));
    }

    #[test]
    fn yuan_parse_exactly() {
        assert_eq!(parse_yuan("12.50"), Ok(Fen(1_250)));
        assert_eq!(parse_yuan("12.5"), Ok(Fen(1_250)));
        assert_eq!(parse_yuan("12"), Ok(Fen(1_200)));
        assert_eq!(parse_yuan("0.07"), Ok(Fen(7)));
        assert_eq!(parse_yuan("0"), Ok(Fen(0)));
        assert_eq!(parse_yuan("-1"), Err(YuanError::Negative));
        assert_eq!(parse_yuan("1.234"), Err(YuanError::TooPrecise));
        assert_eq!(parse_yuan("abc"), Err(YuanError::NotANumber));
        assert_eq!(parse_yuan("1e3"), Err(YuanError::NotANumber));
        assert_eq!(parse_yuan(""), Err(YuanError::NotANumber));
        assert_eq!(parse_yuan("12."), Err(YuanError::NotANumber));
        assert_eq!(parse_yuan(".5"), Err(YuanError::NotANumber));
        assert_eq!(parse_yuan("10000000.01"), Err(YuanError::TooLarge));
        assert_eq!(parse_yuan("99999999999999999999"), Err(YuanError::TooLarge));
        assert_eq!(format_yuan(Fen(1_250)), "12.50");
        assert_eq!(format_yuan(Fen(7)), "0.07");
        for fen in [0, 1, 99, 100, 123_456, limits::amount_fen_max] {
            assert_eq!(parse_yuan(&format_yuan(Fen(fen))), Ok(Fen(fen)));
        }
    }

    #[test]
    fn members_pay_the_lower_price() {
        assert_eq!(unit_price(Fen(100), Some(Fen(80)), true), Fen(80));
        assert_eq!(unit_price(Fen(100), Some(Fen(80)), false), Fen(100));
        assert_eq!(unit_price(Fen(100), Some(Fen(120)), true), Fen(100));
        assert_eq!(unit_price(Fen(100), None, true), Fen(100));
    }

    #[test]
    fn an_old_style_upsert_keeps_the_catalog_fields() {
        let stamp = |ms: u64, origin: &str| Stamp {
            hlc: HlcTimestamp {
                wall_ms: ms,
                counter: 0,
            },
            origin: origin.into(),
        };
        let hq = item("A1");
        let state = merge(None, &stamp(10, "hq"), ProductWrite::Item(&hq)).unwrap();
        let legacy = ProductRecord {
            sku: "A1".into(),
            name: "新咖啡".into(),
            price: Fen(1_800),
            active: true,
        };
        let state = merge(
            Some(&state),
            &stamp(20, "s1"),
            ProductWrite::Product(&legacy),
        )
        .unwrap();
        assert_eq!(state.name, "新咖啡");
        assert_eq!(state.price, Fen(1_800));
        assert_eq!(state.catalog.category.as_deref(), Some("饮料"));
        // Older than both registers: nothing changes.
        assert_eq!(
            merge(Some(&state), &stamp(5, "s2"), ProductWrite::Item(&hq)),
            None
        );
    }

    #[derive(Clone, Debug)]
    struct Write {
        wall_ms: u64,
        origin: u8,
        legacy: bool,
        price: i64,
        category: u8,
    }

    fn write_strategy() -> impl Strategy<Value = Write> {
        (0u64..6, 0u8..3, any::<bool>(), 0i64..5, 0u8..3).prop_map(
            |(wall_ms, origin, legacy, price, category)| Write {
                wall_ms,
                origin,
                legacy,
                price,
                category,
            },
        )
    }

    fn fold(writes: &[Write]) -> Option<ProductState> {
        let mut state: Option<ProductState> = None;
        for write in writes {
            let stamp = Stamp {
                hlc: HlcTimestamp {
                    wall_ms: write.wall_ms,
                    counter: 0,
                },
                origin: format!("s{}", write.origin),
            };
            // One origin never reuses a time: derive the content from the stamp, so that
            // equal stamps are the same operation (a duplicate).
            let legacy = ProductRecord {
                sku: "A".into(),
                name: format!("n{}{}", write.wall_ms, write.origin),
                price: Fen(write.price),
                active: true,
            };
            let mut catalog = item("A");
            catalog.name = legacy.name.clone();
            catalog.price = Fen(write.price);
            catalog.category = Some(format!("c{}", write.category));
            let change = if write.legacy {
                ProductWrite::Product(&legacy)
            } else {
                ProductWrite::Item(&catalog)
            };
            if let Some(next) = merge(state.as_ref(), &stamp, change) {
                state = Some(next);
            }
        }
        state
    }

    proptest! {
        #[test]
        fn merge_is_order_and_duplicate_independent(
            writes in proptest::collection::vec(write_strategy(), 1..12),
            seed in any::<u64>(),
        ) {
            // Distinct operations have distinct stamps: keep the first write of each stamp.
            let mut unique: Vec<Write> = Vec::new();
            for write in writes {
                if !unique.iter().any(|w| w.wall_ms == write.wall_ms && w.origin == write.origin) {
                    unique.push(write);
                }
            }
            let mut shuffled = unique.clone();
            // A seeded Fisher–Yates shuffle, plus duplicates of some writes.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let again: Vec<Write> = shuffled.iter().step_by(2).cloned().collect();
            shuffled.extend(again);
            prop_assert_eq!(fold(&unique), fold(&shuffled));
        }
    }
}
