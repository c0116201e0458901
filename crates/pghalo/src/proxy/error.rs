//! The one place where pghalo's own failures become what a client is told:
//! a real ErrorResponse with a fitting SQLSTATE (DESIGN rule 6).

use bytes::BytesMut;
use pghalo_protocol::SqlState;
use pghalo_protocol::backend::{self as be, ErrorMessage, Severity};

use crate::backend::BackendError;
use crate::pool::PoolError;

#[derive(Debug, Clone)]
pub struct ClientError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
}

impl ClientError {
    /// An error that ends the session.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ClientError {
        self.detail = Some(detail.into());
        self
    }

    /// Appends the ErrorResponse to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        let mut message = ErrorMessage::new(self.severity, self.code, &self.message);
        if let Some(detail) = &self.detail {
            message = message.with_detail(detail);
        }
        if be::write_error_response(out, &message).is_err() {
            // Only an interior NUL can make this fail; say something true.
            let fallback = ErrorMessage::new(
                self.severity,
                self.code,
                "pghalo error (message not encodable)",
            );
            let _ = be::write_error_response(out, &fallback);
        }
    }
}

impl From<PoolError> for ClientError {
    fn from(e: PoolError) -> ClientError {
        match &e {
            PoolError::Exhausted { .. } => {
                ClientError::fatal(e.sqlstate(), "sorry, too many clients already")
                    .with_detail(e.to_string())
            }
            PoolError::Backend(b) => ClientError::from_backend(b),
        }
    }
}

impl ClientError {
    pub fn from_backend(e: &BackendError) -> ClientError {
        match e {
            BackendError::Refused { error, .. } => ClientError::fatal(
                SqlState::from_code(&error.code).unwrap_or(SqlState::CONNECTION_FAILURE),
                error.message.clone(),
            ),
            _ => ClientError::fatal(e.sqlstate(), "pghalo could not get a server connection")
                .with_detail(e.to_string()),
        }
    }
}
