//! Pillar trees: top.sls targeting, Jinja then YAML, deep merge of matched files and of project
//! defaults. Also home of what the state compiler shares with pillar (source trees, the Jinja
//! dialect, YAML helpers, top files), since `states` depends on this crate.

pub mod compile;
pub mod merge;
pub mod template;
pub mod top;
pub mod tree;
pub mod yaml;

pub use compile::{Pillar, PillarError, PillarTree};
pub use merge::{deep_merge, deep_merge_into, defaults_chain};
pub use template::{RenderError, TemplateContext, TemplateEngine};
pub use top::{TargetMatch, TopEntry, TopError, TopFile, glob_match};
pub use tree::{DirTree, MemoryTree, SourceTree, TreeError};
pub use yaml::YamlError;
