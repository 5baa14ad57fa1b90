//! What render-time execution functions may ask of the machine a template renders for
//! (`salt['cmd.run']`, `salt['user.info']`, `salt['file.file_exists']`, ...). Rendering stays free
//! of process I/O: the agent supplies an implementation for `apply --local`; on the master there
//! is none and those functions fail with a message naming the function.

use std::fmt::Debug;

use serde_json::Value as Json;

/// The kinds of filesystem entry `file.file_exists` / `file.directory_exists` test for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Directory,
    Any,
}

/// Host access for render-time functions. Each method answers as Salt's function does on a host
/// without the thing (`None`, `false`, `''`) rather than failing, except `cmd_run`, whose
/// error text is shown to the user.
pub trait HostFunctions: Send + Sync + Debug {
    /// `cmd.run`: the command's output (stdout, then stderr), trailing newline removed.
    fn cmd_run(&self, command: &str, cwd: Option<&str>) -> Result<String, String>;
    /// `cmd.which`: the full path of an executable on `PATH`.
    fn which(&self, name: &str) -> Option<String>;
    /// `user.info`: Salt's fields (`name`, `uid`, `gid`, `home`, `shell`, `groups`, ...).
    fn user_info(&self, name: &str) -> Option<Json>;
    /// `pkg.version`: the installed version of a package, `''` when not installed.
    fn pkg_version(&self, name: &str) -> String;
    /// `file.file_exists`, `file.directory_exists`, `file.exists`.
    fn path_exists(&self, path: &str, kind: PathKind) -> bool;
    /// `cp.get_file_str` of a local path: the file's text.
    fn read_file(&self, path: &str) -> Option<String>;
}
