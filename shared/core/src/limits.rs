//! Every limit in one module. Names end in `_max`; units come last.

/// Longest store id, in bytes.
pub const store_id_bytes_max: usize = 32;
/// Longest member or product name, in characters.
pub const name_chars_max: usize = 64;
/// Longest free-text note, in characters.
pub const note_chars_max: usize = 500;
/// Most tags on one member.
pub const member_tags_max: usize = 32;
/// Longest tag, in characters.
pub const tag_chars_max: usize = 32;
/// Longest card number, in characters.
pub const card_no_chars_max: usize = 20;
/// Longest SKU, in characters.
pub const sku_chars_max: usize = 64;
/// Most lines in one checkout.
pub const checkout_lines_max: usize = 200;
/// Most payments in one checkout.
pub const checkout_payments_max: usize = 8;
/// Largest quantity on one line.
pub const line_qty_max: i64 = 10_000;
/// Largest single money amount accepted from outside: ¥10,000,000.00.
pub const amount_fen_max: i64 = 1_000_000_000;
/// How far a remote HLC may run ahead of our physical clock before we refuse it, in ms.
pub const hlc_drift_ms_max: u64 = 5 * 60 * 1000;
/// Largest encoded replicated operation, in bytes.
pub const op_bytes_max: usize = 256 * 1024;
/// Most movements in one stock batch (and lines in one transfer).
pub const stock_batch_movements_max: usize = 200;
