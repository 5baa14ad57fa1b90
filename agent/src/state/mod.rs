//! Executing plans: the state modules (`file`, `cmd`, `service`, `pkg`/`pkgrepo`, `user`/`group`,
//! `host`, `cron`, `sysctl`, `test`, with Salt's names and argument names) and the [`Executor`]
//! that runs a [`corpus_states::Plan`] in order with Salt's requisite semantics, returning
//! Salt's result fields.

mod accounts;
mod accumulated;
mod archive;
mod args;
pub mod cmd;
mod cmd_script;
mod cron;
pub mod executor;
pub mod file;
mod file_edit;
mod file_paths;
mod file_recurse;
mod file_sources;
mod git;
mod guards;
pub mod host_functions;
mod hosts;
mod pip;
pub mod pkg;
mod requisites;
mod result;
pub mod service;
mod ssh_auth;
mod sysctl;
mod template;
pub mod test;
pub mod users;

pub use executor::Executor;
pub use file_sources::{FileSources, JinjaRenderer, LocalFileSources};
pub use result::{KeyedResult, Outcome, Report, StateResult};
pub use service::{ServiceControl, Systemctl};
pub use template::file_renderer;

/// What a state module may use besides its chunk.
pub struct StateContext<'a> {
    /// Salt's `test=True`: change nothing, report what would change (result `None`).
    pub test: bool,
    pub sources: &'a dyn FileSources,
    pub services: &'a dyn ServiceControl,
    /// `file.accumulated` text of this run, for the templates and blocks it feeds.
    pub accumulators: std::sync::Arc<accumulated::Accumulators>,
}

#[cfg(test)]
pub(crate) mod testing;
