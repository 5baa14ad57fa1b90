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
