//! The SLS language: render state files with minijinja, parse the YAML into high data, expand it
//! into an ordered [`Plan`] of state chunks with resolved requisites. This crate renders and
//! plans; it never touches the system (the agent executes plans).
//!
//! Entry point: [`StateTree`] over a [`SourceTree`] (a [`DirTree`] in production, a
//! [`MemoryTree`] in tests), with a [`TemplateContext`] carrying pillar, grains, common and env.
//! [`render_for_agent`] is the whole render for one agent (pillar, then states), shared by the
//! master's `render` and the agent's `apply --local`.

// Errors carry file, line, state id and the known alternatives; they are built once per failed
// render, so their size does not matter and boxing them would only obscure the call sites.
#![allow(clippy::result_large_err)]

mod agent_render;
pub mod catalogue;
mod compile;
pub mod error;
mod high;
pub mod plan;
mod requisites;
pub mod settings;
mod show;

pub use agent_render::{
    AgentRender, AgentRenderError, AgentTrees, HostedTrees, SALTENV, render_for_agent,
    render_on_host,
};
pub use compile::{RenderedPlan, StateTree};
pub use corpus_pillar::{DirTree, MemoryTree, SourceTree, TemplateContext, TreeError};
pub use error::{Location, StateError};
pub use plan::{Chunk, Phase, Plan, ProjectPlan, Requisite, RequisiteKind};
pub use settings::{HealthCheck, HealthProbe, NotifySettings, ProjectSettings, SettingsError};
pub use show::show_sls;
