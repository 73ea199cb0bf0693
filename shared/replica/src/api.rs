//! The HTTP edge both nodes share: the one error type (a status, a stable code and a message for
//! people) and the reply of a write (a status and a JSON body).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chainsync_core::checkout::CheckoutError;
use serde::Serialize;

use crate::views::{ErrorBody, ErrorDetail};
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
            CheckoutError::CouponMinSpend { .. } => "coupon_min_spend",
        };
        ApiError::new(422, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// What a write answers: an HTTP status and a JSON body (kept as-is for idempotent replays).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn new<T: Serialize>(status: u16, body: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_value(body).map_err(ApiError::internal)?;
        Ok(Reply { status, body })
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        (status, Json(self.body)).into_response()
    }
}

/// Adds the `bearer` security scheme to an OpenAPI document.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
