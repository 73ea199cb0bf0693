//! Money is an integer number of 分 (fen, 1/100 yuan). Never a float.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of money in 分. Arithmetic is checked: overflow is an error, never a wrap.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Fen(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount overflow")]
pub struct Overflow;

impl Fen {
    pub const ZERO: Fen = Fen(0);

    pub fn checked_add(self, other: Fen) -> Result<Fen, Overflow> {
        self.0.checked_add(other.0).map(Fen).ok_or(Overflow)
    }

    pub fn checked_sub(self, other: Fen) -> Result<Fen, Overflow> {
        self.0.checked_sub(other.0).map(Fen).ok_or(Overflow)
    }

    pub fn checked_mul(self, factor: i64) -> Result<Fen, Overflow> {
        self.0.checked_mul(factor).map(Fen).ok_or(Overflow)
    }

    pub fn checked_neg(self) -> Result<Fen, Overflow> {
        self.0.checked_neg().map(Fen).ok_or(Overflow)
    }

    /// `self * basis_points / 10_000`, rounded toward zero.
    pub fn mul_basis_points(self, basis_points: i64) -> Result<Fen, Overflow> {
        let wide = i128::from(self.0) * i128::from(basis_points) / 10_000;
        i64::try_from(wide).map(Fen).map_err(|_| Overflow)
    }

    /// Sum of amounts, checked.
    pub fn sum<I: IntoIterator<Item = Fen>>(amounts: I) -> Result<Fen, Overflow> {
        amounts
            .into_iter()
            .try_fold(Fen::ZERO, |total, amount| total.checked_add(amount))
    }
}

impl fmt::Display for Fen {
    /// Shows `¥12.34` (and `-¥0.05`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}¥{}.{:02}", abs / 100, abs % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_yuan_with_two_decimals() {
        assert_eq!(Fen(123_456).to_string(), "¥1234.56");
        assert_eq!(Fen(-5).to_string(), "-¥0.05");
        assert_eq!(Fen(i64::MIN).to_string(), "-¥92233720368547758.08");
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Fen(i64::MAX).checked_add(Fen(1)), Err(Overflow));
        assert_eq!(Fen(i64::MIN).checked_sub(Fen(1)), Err(Overflow));
        assert_eq!(Fen(i64::MIN).checked_neg(), Err(Overflow));
        assert_eq!(Fen(50_000).mul_basis_points(1_000), Ok(Fen(5_000)));
        assert_eq!(Fen(999).mul_basis_points(500), Ok(Fen(49)));
        assert_eq!(Fen::sum([Fen(1), Fen(2), Fen(3)]), Ok(Fen(6)));
        assert_eq!(Fen::sum([Fen(i64::MAX), Fen(1)]), Err(Overflow));
    }
}
