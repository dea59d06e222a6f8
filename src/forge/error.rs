/// Why a delivery was refused by its forge adapter. Every message names the header or field
/// and none carries a secret or an expected signature. Intake maps these to HTTP statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error("missing signature: header {0} is required")]
    MissingSignature(&'static str),
    #[error("signature in {0} does not match the body")]
    BadSignature(&'static str),
    #[error("header {0}: timestamp is outside the allowed window (replayed or clock skew)")]
    StaleTimestamp(&'static str),
    #[error("unsupported Content-Type \"{got}\" (expected {expected})")]
    UnsupportedContentType { got: String, expected: &'static str },
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    MalformedJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("malformed form body: {0}")]
    MalformedForm(String),
    #[error("field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
}

impl HookError {
    pub(crate) fn json(error: serde_json::Error) -> HookError {
        // serde_json appends " at line L column C" to its message; we say it once, up front.
        let text = error.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        HookError::MalformedJson {
            line: error.line(),
            column: error.column(),
            message,
        }
    }

    /// The metric label and the short reason kept with a rejected delivery.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::MissingHeader(_) | HookError::BadHeader { .. } => "bad_header",
            HookError::MissingSignature(_) => "missing_signature",
            HookError::BadSignature(_) => "bad_signature",
            HookError::StaleTimestamp(_) => "stale_timestamp",
            HookError::UnsupportedContentType { .. } => "unsupported_content_type",
            HookError::MalformedJson { .. } | HookError::MalformedForm(_) => "malformed_body",
            HookError::BadField { .. } => "bad_field",
        }
    }
}
