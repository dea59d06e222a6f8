//! Every way intake refuses a delivery, and the one place that maps them to HTTP.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::forge::{ForgeKind, HookError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("unknown project \"{0}\"")]
    UnknownProject(String),
    #[error("missing header X-GitHub-Event or X-Gitlab-Event: not a forge webhook")]
    UnknownForge,
    #[error("this is a {got} delivery but project \"{project}\" is configured for {expected}")]
    ForgeMismatch {
        project: String,
        got: ForgeKind,
        expected: ForgeKind,
    },
    #[error("missing header Content-Type")]
    MissingContentType,
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The bodies already in memory fill the budget (503: recovery finds the push later).
    #[error("too many large deliveries in flight; retry later")]
    Busy,
    #[error("reading the body failed: {0}")]
    BodyRead(String),
    /// No body bytes came for `server.body_idle_timeout_secs`.
    #[error("body stalled: no bytes for {secs} s")]
    BodyStalled { secs: u64 },
    /// The body had not arrived whole after `server.body_deadline_secs`.
    #[error("body not received within {secs} s")]
    BodyTooSlow { secs: u64 },
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("repository \"{got}\" is not this project's repository")]
    WrongRepository { got: String },
    /// The store could not commit: the delivery is NOT recorded and the forge should retry.
    /// The cause is logged, never sent.
    #[error("the delivery could not be recorded; retry later")]
    Store(#[source] StoreError),
}

impl IntakeError {
    /// The label kept in metrics and with the rejected delivery.
    pub fn label(&self) -> &'static str {
        match self {
            IntakeError::UnknownProject(_) => "unknown_project",
            IntakeError::UnknownForge => "unknown_forge",
            IntakeError::ForgeMismatch { .. } => "forge_mismatch",
            IntakeError::MissingContentType => "unsupported_content_type",
            IntakeError::TooLarge { .. } => "too_large",
            IntakeError::BodyRead(_) => "body_read",
            IntakeError::BodyStalled { .. } | IntakeError::BodyTooSlow { .. } => "body_timeout",
            IntakeError::Busy => "busy",
            IntakeError::Hook(e) => e.label(),
            IntakeError::WrongRepository { .. } => "wrong_repository",
            IntakeError::Store(_) => "store_unavailable",
        }
    }
}

impl ResponseError for IntakeError {
    fn status_code(&self) -> StatusCode {
        match self {
            IntakeError::UnknownProject(_) => StatusCode::NOT_FOUND,
            IntakeError::UnknownForge
            | IntakeError::ForgeMismatch { .. }
            | IntakeError::BodyRead(_) => StatusCode::BAD_REQUEST,
            IntakeError::MissingContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::BodyStalled { .. } | IntakeError::BodyTooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            IntakeError::WrongRepository { .. } => StatusCode::FORBIDDEN,
            IntakeError::Store(_) | IntakeError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::Hook(e) => match e {
                HookError::MissingSignature(_)
                | HookError::BadSignature(_)
                | HookError::StaleTimestamp(_) => StatusCode::UNAUTHORIZED,
                HookError::UnsupportedContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                HookError::MissingHeader(_)
                | HookError::BadHeader { .. }
                | HookError::MalformedJson { .. }
                | HookError::MalformedForm(_)
                | HookError::BadField { .. } => StatusCode::BAD_REQUEST,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, IntakeError::Store(_) | IntakeError::Busy) {
            response.insert_header(("Retry-After", "5"));
        }
        if matches!(
            self,
            IntakeError::BodyStalled { .. } | IntakeError::BodyTooSlow { .. }
        ) {
            // The rest of the body may still come; the connection cannot be reused.
            response.force_close();
        }
        response.json(serde_json::json!({ "error": one_line(&self.to_string()) }))
    }
}

/// Reasons are one line, whatever a parser put in them.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
