//! The server's one error type and its single mapping to gRPC statuses (API.md). Services
//! and backends return [`Error`]; only [`Error::into_status`] turns it into a `tonic::Status`,
//! so every RPC reports the same code for the same cause, and internal details are logged,
//! never sent to the caller.

use tonic::{Code, Status};

/// A domain error: the kind decides the gRPC code, the text is shown to the user.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Bad input: empty or malformed fields, bad ids.
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing, malformed, expired or revoked credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated but not allowed: not a member, not a friend.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit was hit: rate, size, count.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A backend is down or the server is shutting down: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a corrupted store. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `INVALID_ARGUMENT` with a message for the user.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
    /// `UNAUTHENTICATED` with a message for the user.
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        Self::Unauthenticated(msg.into())
    }
    /// `PERMISSION_DENIED` with a message for the user.
    pub fn denied(msg: impl Into<String>) -> Self {
        Self::PermissionDenied(msg.into())
    }
    /// `NOT_FOUND` with a message for the user.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    /// `RESOURCE_EXHAUSTED` with a message for the user.
    pub fn exhausted(msg: impl Into<String>) -> Self {
        Self::ResourceExhausted(msg.into())
    }
    /// `UNAVAILABLE`: the caller should retry.
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::Unavailable(msg.into())
    }
    /// A bug or corrupt data; the detail is logged, never sent.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The text safe to show a caller.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The single conversion to a gRPC status; internal errors are logged here.
    pub fn into_status(self) -> Status {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        Status::new(self.code(), self.public_message())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        e.into_status()
    }
}
