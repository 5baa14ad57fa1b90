//! One module per `corpus` command.

pub mod listhosts;
