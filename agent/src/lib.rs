//! corpus-agent: enrolls with the master, keeps one mutual-TLS stream to it, and executes the
//! plans it receives (or, masterless, plans it renders itself with `apply --local`).

pub mod apply_local;
pub mod blobs;
pub mod config;
pub mod confine;
pub mod enroll;
pub mod grains;
pub mod jobs;
pub mod lifecycle;
pub mod link;
pub mod operator;
pub mod renew;
pub mod results;
pub mod state;
pub mod status;
