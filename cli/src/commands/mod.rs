//! One module per `corpus` command. Their arguments arrive already checked by `args.rs`.

pub mod destroy;
pub mod follow;
pub mod init;
pub mod init_env;
pub mod listhosts;
pub mod logout;
pub mod push;
pub mod quota;
pub mod rollback;
pub mod status;
