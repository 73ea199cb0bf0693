//! The one error type of the HTTP API: a status, a stable code and a message for people.

use chainsync_core::checkout::CheckoutError;
use chainsync_core::member::MemberError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_json", message)
    }
    pub fn invalid_field(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "invalid_field", message)
    }
    pub fn invalid_amount(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "invalid_amount", message)
    }
    pub fn unknown_member() -> ApiError {
        ApiError::new(404, "unknown_member", "no member with this id")
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(%message, "internal error");
        ApiError::new(
            500,
            "internal",
            "internal error; the request changed nothing",
        )
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        ApiError::internal(format!("database: {e}"))
    }
}

impl From<MemberError> for ApiError {
    fn from(e: MemberError) -> ApiError {
        match e {
            MemberError::InvalidField { .. } => ApiError::invalid_field(e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<CheckoutError> for ApiError {
    fn from(e: CheckoutError) -> ApiError {
        let code = match e {
            CheckoutError::EmptyCart => "empty_cart",
            CheckoutError::TooManyLines { .. } | CheckoutError::TooManyPayments { .. } => {
                "invalid_field"
            }
            CheckoutError::InvalidQty { .. } => "invalid_qty",
            CheckoutError::InvalidAmount { .. } | CheckoutError::Overflow => "invalid_amount",
            CheckoutError::PaymentsMismatch { .. } => "payments_mismatch",
            CheckoutError::MemberRequired => "member_required",
            CheckoutError::InsufficientBalance { .. } => "insufficient_balance",
            CheckoutError::InsufficientPoints { .. } => "insufficient_points",
        };
        ApiError::new(422, code, e.to_string())
    }
}
