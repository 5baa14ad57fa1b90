//! Mapping of the master's internal errors to gRPC statuses: details go to the log, the caller
//! gets a message that names the problem without leaking internals or secrets.

use tonic::Status;

/// An unexpected failure (storage, signing): logged in full, reported briefly.
pub fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal master error: the master's log has the details")
}
