//! The corpus wire protocol. This is the only crate that names prost types; the others convert
//! at their edge into their own domain types.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Version 1 of the protocol: `corpus.v1` in `proto/corpus.proto`.
pub mod v1 {
    tonic::include_proto!("corpus.v1");
}

pub use v1::*;

/// Metadata key carrying a user's session token on `Client` calls.
pub const AUTHORIZATION: &str = "authorization";

/// Largest message either side accepts; blob transfers stream in chunks well under this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Size of one chunk of a blob transfer.
pub const BLOB_CHUNK_BYTES: usize = 256 * 1024;

pub mod grains;
pub mod names;

/// One `label()` per printed enum: the lowercase word the console, the CLI and their `--json`
/// output use for it. A value this build does not know (a newer peer's) reads `unknown`.
macro_rules! labels {
    ($($enum:ident { $($variant:ident => $label:literal),+ $(,)? })+) => {$(
        impl $enum {
            /// The word printed for this value.
            pub fn label(self) -> &'static str {
                match self {
                    $($enum::$variant => $label,)+
                    $enum::Unspecified => "unknown",
                }
            }

            /// The word printed for a wire value (prost keeps enums as `i32`).
            pub fn label_of(value: i32) -> &'static str {
                $enum::try_from(value).map_or("unknown", $enum::label)
            }
        }
    )+};
}

labels! {
    AgentStatus { Pending => "pending", Accepted => "accepted", Rejected => "rejected" }
    JobKind {
        InitProject => "init",
        Deploy => "deploy",
        Rollback => "rollback",
        Destroy => "destroy",
    }
    Mode { Editable => "editable", Cooking => "cooking", Final => "final" }
    StepResult {
        Running => "running",
        Success => "success",
        Failed => "failed",
        Skipped => "skipped",
    }
    JobStatus {
        Running => "running",
        Success => "success",
        Failed => "failed",
        RolledBack => "rolled_back",
        Refused => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_printed_words_and_unknown_values_read_unknown() {
        assert_eq!(JobStatus::RolledBack.label(), "rolled_back");
        assert_eq!(JobStatus::label_of(JobStatus::Refused as i32), "refused");
        assert_eq!(StepResult::label_of(StepResult::Skipped as i32), "skipped");
        assert_eq!(Mode::Final.label(), "final");
        assert_eq!(AgentStatus::Pending.label(), "pending");
        assert_eq!(JobKind::InitProject.label(), "init");
        assert_eq!(JobStatus::label_of(999), "unknown");
        assert_eq!(JobStatus::Unspecified.label(), "unknown");
    }
}
