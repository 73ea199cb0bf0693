use super::*;
use proptest::prelude::*;

/// 2026-11-23 (a Monday) 12:00 in UTC+8.
const monday_noon: u64 = 1_795_406_400_000;
const offset: i32 = 8 * 3_600;

fn template() -> CouponTemplateV2 {
    CouponTemplateV2 {
        id: Uuid::from_u128(1),
        name: "满100减10".into(),
        kind: CouponKind::Cash { value: Fen(1_000) },
        min_spend: Fen(0),
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
    }
}

fn line(sku: &str, price: i64) -> PricedLine {
    PricedLine {
        sku: sku.into(),
        name: sku.into(),
        qty: 1,
        unit_price: Fen(price),
    }
}

const member: Uuid = Uuid::from_u128(7);

fn check(
    template: &CouponTemplateV2,
    edit: impl FnOnce(&mut CouponFacts, &mut RedeemContext),
) -> Result<Fen, &'static str> {
    let lines = [line("A", 20_000)];
    let (from, until) = template.valid_between(monday_noon - 86_400_000);
    let mut facts = CouponFacts {
        code: "C1",
        template,
        valid_from_ms: from,
        valid_until_ms: until,
        owner: Some(member),
        redeemed: false,
        member_redemptions: 0,
    };
    let mut ctx = RedeemContext {
        now_ms: monday_noon,
        utc_offset_seconds: offset,
        store: "s1",
        member: Some(member),
        total: Fen(20_000),
        lines: &lines,
        coupons_in_checkout: 1,
        offline: false,
    };
    edit(&mut facts, &mut ctx);
    check_redeem(&facts, &ctx).map_err(|r| r.code())
}

#[test]
fn a_valid_cash_coupon_gives_its_value() {
    assert_eq!(check(&template(), |_, _| {}), Ok(Fen(1_000)));
}

#[test]
fn refused_coupon_expired() {
    assert_eq!(
        check(&template(), |_, c| c.now_ms += 40 * 86_400_000),
        Err("coupon_expired")
    );
}

#[test]
fn refused_coupon_not_yet_valid() {
    let mut t = template();
    t.validity = Validity::Dates {
        from_ms: monday_noon + 1,
        until_ms: monday_noon + 86_400_000,
    };
    assert_eq!(check(&t, |_, _| {}), Err("coupon_not_yet_valid"));
}

#[test]
fn refused_coupon_store_not_allowed() {
    let mut t = template();
    t.stores = vec!["s2".into()];
    assert_eq!(check(&t, |_, _| {}), Err("coupon_store_not_allowed"));
    assert_eq!(check(&t, |_, c| c.store = "s2"), Ok(Fen(1_000)));
}

#[test]
fn refused_coupon_outside_hours() {
    let mut t = template();
    // Weekends only: a Monday is refused.
    t.window = Some(TimeWindow {
        weekdays: 0b110_0000,
        from_hour: 0,
        until_hour: 24,
    });
    assert_eq!(check(&t, |_, _| {}), Err("coupon_outside_hours"));
    // Mornings only (local time): noon is refused, 09:00 taken.
    t.window = Some(TimeWindow {
        weekdays: 0,
        from_hour: 8,
        until_hour: 11,
    });
    assert_eq!(check(&t, |_, _| {}), Err("coupon_outside_hours"));
    assert_eq!(check(&t, |_, c| c.now_ms -= 3 * 3_600_000), Ok(Fen(1_000)));
}

#[test]
fn refused_coupon_min_spend() {
    let mut t = template();
    t.min_spend = Fen(30_000);
    assert_eq!(check(&t, |_, _| {}), Err("coupon_min_spend"));
}

#[test]
fn refused_coupon_not_stackable() {
    let mut t = template();
    t.stackable = false;
    assert_eq!(
        check(&t, |_, c| c.coupons_in_checkout = 2),
        Err("coupon_not_stackable")
    );
}

#[test]
fn refused_coupon_member_limit() {
    let mut t = template();
    t.per_member_limit = 2;
    assert_eq!(check(&t, |f, _| f.member_redemptions = 1), Ok(Fen(1_000)));
    assert_eq!(
        check(&t, |f, _| f.member_redemptions = 2),
        Err("coupon_member_limit")
    );
}

#[test]
fn refused_coupon_not_owner() {
    assert_eq!(
        check(&template(), |_, c| c.member = Some(Uuid::from_u128(8))),
        Err("coupon_not_owner")
    );
    assert_eq!(
        check(&template(), |_, c| c.member = None),
        Err("coupon_not_owner")
    );
    // A bearer coupon (no owner) is anyone's.
    assert_eq!(
        check(&template(), |f, c| {
            f.owner = None;
            c.member = None
        }),
        Ok(Fen(1_000))
    );
}

#[test]
fn refused_coupon_already_redeemed() {
    assert_eq!(
        check(&template(), |f, _| f.redeemed = true),
        Err("coupon_already_redeemed")
    );
}

#[test]
fn refused_coupon_sku_not_in_cart_and_product_vouchers_take_one_unit() {
    let mut t = template();
    t.kind = CouponKind::Product { sku: "B".into() };
    assert_eq!(check(&t, |_, _| {}), Err("coupon_sku_not_in_cart"));
    t.kind = CouponKind::Product { sku: "A".into() };
    assert_eq!(check(&t, |_, _| {}), Ok(Fen(20_000)));
}

#[test]
fn refused_online_only_while_offline() {
    let mut t = template();
    t.online_only = true;
    assert_eq!(check(&t, |_, c| c.offline = true), Err("online_only"));
    assert_eq!(check(&t, |_, _| {}), Ok(Fen(1_000)));
}

#[test]
fn discount_coupons_take_a_share_with_a_cap() {
    let mut t = template();
    t.kind = CouponKind::Discount {
        off_bp: 1_500,
        max_off: Fen(0),
    };
    assert_eq!(check(&t, |_, _| {}), Ok(Fen(3_000)));
    t.kind = CouponKind::Discount {
        off_bp: 1_500,
        max_off: Fen(2_000),
    };
    assert_eq!(check(&t, |_, _| {}), Ok(Fen(2_000)));
}

#[test]
fn weekday_and_hour_in_local_time() {
    assert_eq!(local_weekday_hour(monday_noon, offset), (0, 12));
    assert_eq!(local_weekday_hour(monday_noon, 0), (0, 4));
    assert_eq!(
        local_weekday_hour(monday_noon + 6 * 86_400_000, offset),
        (6, 12)
    );
}

#[test]
fn templates_out_of_bounds_are_refused() {
    let mut t = template();
    assert!(t.validate().is_ok());
    t.window = Some(TimeWindow {
        weekdays: 0,
        from_hour: 12,
        until_hour: 12,
    });
    assert!(t.validate().is_err());
    let mut t = template();
    t.kind = CouponKind::Discount {
        off_bp: 10_000,
        max_off: Fen(0),
    };
    assert!(t.validate().is_err());
    let mut t = template();
    t.validity = Validity::DaysAfterIssue { days: 0 };
    assert!(t.validate().is_err());
}

#[test]
fn the_wheel_lands_on_each_slice_by_weight() {
    let lottery = Lottery {
        id: Uuid::from_u128(1),
        name: "转盘".into(),
        prizes: vec![
            Prize {
                label: "谢谢参与".into(),
                template_id: None,
                weight: 3,
            },
            Prize {
                label: "5元券".into(),
                template_id: Some(Uuid::from_u128(2)),
                weight: 1,
            },
        ],
        draws_per_day: 1,
        active: true,
    };
    let landed: Vec<_> = (0..8).map(|r| lottery.spin(r)).collect();
    assert_eq!(landed, [0, 0, 0, 1, 0, 0, 0, 1].map(Some));
}

fn transfer(id: u128, at_ms: u64, from: u128, to: u128) -> CouponTransfer {
    CouponTransfer {
        id: Uuid::from_u128(id),
        code: "C1".into(),
        from_member: Uuid::from_u128(from),
        to_member: Uuid::from_u128(to),
        at_ms,
    }
}

#[test]
fn two_transfers_of_one_coupon_made_apart_the_earlier_wins() {
    let a = transfer(10, 100, 1, 2);
    let b = transfer(11, 200, 1, 3);
    let (owner, void) = owner_after(Some(Uuid::from_u128(1)), &[b.clone(), a.clone()]);
    assert_eq!(owner, Some(Uuid::from_u128(2)));
    assert_eq!(void, vec![b.id]);
    // A chain of gifts follows through.
    let c = transfer(12, 300, 2, 4);
    assert_eq!(
        owner_after(Some(Uuid::from_u128(1)), &[c, a]).0,
        Some(Uuid::from_u128(4))
    );
}

proptest! {
    #[test]
    fn the_owner_is_independent_of_order_and_duplicates(
        raw in proptest::collection::vec((0u64..20, 0u128..4, 0u128..4), 0..12),
        seed in any::<u64>(),
    ) {
        let transfers: Vec<_> = raw.iter().enumerate()
            .map(|(i, (at, from, to))| transfer(100 + i as u128, *at, *from, *to))
            .collect();
        let first = owner_after(Some(Uuid::from_u128(0)), &transfers);
        let mut shuffled = transfers.clone();
        // A deterministic shuffle from the seed, with some transfers repeated.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let repeated: Vec<_> = shuffled.iter().take(3).cloned().collect();
        shuffled.extend(repeated);
        prop_assert_eq!(owner_after(Some(Uuid::from_u128(0)), &shuffled), first);
    }
}
