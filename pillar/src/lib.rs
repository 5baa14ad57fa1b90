//! Pillar trees: top.sls targeting, Jinja then YAML, deep merge of matched files and of project defaults.

pub mod merge;
pub mod template;
pub mod tree;

pub use merge::{deep_merge, deep_merge_into, defaults_chain};
pub use template::{RenderError, TemplateContext, TemplateEngine};
pub use tree::{DirTree, MemoryTree, SourceTree, TreeError};
