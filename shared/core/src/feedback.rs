//! Feedback entries (反馈): a member's rating (1 to 5) and words about a visit, optionally tied
//! to a checkout. Each is an immutable operation (`OpV1::Feedback`) kept in a grow-only set by
//! id, so feedback given at stores apart is all kept and every replica lists the same entries.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most characters of a feedback text.
pub const feedback_text_chars_max: usize = 500;

/// One feedback entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: Uuid,
    pub member_id: Uuid,
    /// 1 (bad) to 5 (very good).
    pub rating: u8,
    pub text: String,
    /// The visit it is about, if the member named one.
    pub checkout_id: Option<Uuid>,
    /// Unix ms at the store.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("rating must be 1 to 5")]
    Rating,
    #[error("text is at most 500 characters, without control characters other than line breaks")]
    Text,
}

/// Check a rating and text from outside; returns the text trimmed.
pub fn check(rating: i64, text: &str) -> Result<(u8, String), FeedbackError> {
    let rating = u8::try_from(rating)
        .ok()
        .filter(|r| (1..=5).contains(r))
        .ok_or(FeedbackError::Rating)?;
    let text = text.trim();
    if text.chars().count() > feedback_text_chars_max
        || text.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(FeedbackError::Text);
    }
    Ok((rating, text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_and_texts_are_checked() {
        assert_eq!(
            check(5, "  很好\n下次再来 "),
            Ok((5, "很好\n下次再来".to_owned()))
        );
        assert_eq!(check(1, ""), Ok((1, String::new())));
        assert_eq!(check(0, "x"), Err(FeedbackError::Rating));
        assert_eq!(check(6, "x"), Err(FeedbackError::Rating));
        assert_eq!(check(-1, "x"), Err(FeedbackError::Rating));
        assert_eq!(check(3, "a\u{7}b"), Err(FeedbackError::Text));
        assert_eq!(check(3, &"好".repeat(501)), Err(FeedbackError::Text));
        assert!(check(3, &"好".repeat(500)).is_ok());
    }
}
