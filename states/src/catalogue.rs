//! The state functions corpus supports, in one table shared by the compiler (which rejects
//! unknown functions) and the agent (which dispatches on them).

/// One supported `module.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFunction {
    pub module: &'static str,
    pub function: &'static str,
    /// Arguments the function understands, Salt's names. `name` and [`GLOBAL_ARGS`] are implied;
    /// a state given any other argument fails naming it rather than running without it.
    pub args: &'static [&'static str],
}

/// Every supported state function.
pub const CATALOGUE: &[StateFunction] = &[
    StateFunction {
        module: "file",
        function: "managed",
        args: &[
            "contents",
            "contents_pillar",
            "contents_grains",
            "contents_newline",
            "source",
            "template",
            "mode",
            "user",
            "group",
            "makedirs",
            "context",
            "defaults",
            "create",
            "replace",
            "show_changes",
            "dir_mode",
        ],
    },
    StateFunction {
        module: "file",
        function: "directory",
        args: &["mode", "dir_mode", "user", "group", "makedirs"],
    },
    StateFunction {
        module: "file",
        function: "symlink",
        args: &["target", "force", "makedirs", "user", "group"],
    },
    StateFunction {
        module: "file",
        function: "absent",
        args: &[],
    },
    StateFunction {
        module: "file",
        function: "replace",
        args: &[
            "pattern",
            "repl",
            "count",
            "flags",
            "append_if_not_found",
            "prepend_if_not_found",
            "not_found_content",
            "ignore_if_missing",
            "show_changes",
            "backup",
        ],
    },
    StateFunction {
        module: "file",
        function: "blockreplace",
        args: &[
            "marker_start",
            "marker_end",
            "content",
            "append_if_not_found",
            "prepend_if_not_found",
            "show_changes",
            "backup",
        ],
    },
    StateFunction {
        module: "file",
        function: "append",
        args: &["text", "makedirs"],
    },
    StateFunction {
        module: "file",
        function: "line",
        args: &[
            "mode",
            "content",
            "match",
            "location",
            "before",
            "after",
            "indent",
            "create",
            "show_changes",
        ],
    },
    StateFunction {
        module: "file",
        function: "exists",
        args: &[],
    },
    StateFunction {
        module: "file",
        function: "missing",
        args: &[],
    },
    StateFunction {
        module: "file",
        function: "copy",
        args: &["source", "force", "makedirs", "mode"],
    },
    StateFunction {
        module: "file",
        function: "recurse",
        args: &[
            "source",
            "template",
            "file_mode",
            "dir_mode",
            "include_pat",
            "exclude_pat",
            "user",
            "group",
            "context",
            "defaults",
            "replace",
        ],
    },
    StateFunction {
        module: "file",
        function: "accumulated",
        args: &["filename", "text"],
    },
    StateFunction {
        module: "cmd",
        function: "run",
        args: &[
            "cwd",
            "env",
            "runas",
            "creates",
            "unless",
            "onlyif",
            "timeout",
            "shell",
            "success_retcodes",
        ],
    },
    StateFunction {
        module: "cmd",
        function: "wait",
        args: &[
            "cwd",
            "env",
            "runas",
            "creates",
            "unless",
            "onlyif",
            "timeout",
            "shell",
            "success_retcodes",
        ],
    },
    StateFunction {
        module: "cmd",
        function: "script",
        args: &[
            "source",
            "template",
            "args",
            "context",
            "cwd",
            "env",
            "runas",
            "creates",
            "unless",
            "onlyif",
            "timeout",
            "shell",
            "success_retcodes",
        ],
    },
    StateFunction {
        module: "service",
        function: "running",
        args: &["enable", "reload"],
    },
    StateFunction {
        module: "service",
        function: "dead",
        args: &["enable"],
    },
    StateFunction {
        module: "service",
        function: "restarted",
        args: &[],
    },
    StateFunction {
        module: "service",
        function: "enabled",
        args: &[],
    },
    StateFunction {
        module: "service",
        function: "disabled",
        args: &[],
    },
    StateFunction {
        module: "pkg",
        function: "installed",
        args: &["pkgs", "version", "refresh", "fromrepo"],
    },
    StateFunction {
        module: "pkg",
        function: "latest",
        args: &["pkgs", "refresh"],
    },
    StateFunction {
        module: "pkg",
        function: "removed",
        args: &["pkgs"],
    },
    StateFunction {
        module: "pkg",
        function: "purged",
        args: &["pkgs"],
    },
    StateFunction {
        module: "pkgrepo",
        function: "managed",
        args: &["file", "humanname", "refresh", "refresh_db"],
    },
    StateFunction {
        module: "pkgrepo",
        function: "absent",
        args: &["file"],
    },
    StateFunction {
        module: "user",
        function: "present",
        args: &[
            "uid",
            "gid",
            "home",
            "shell",
            "fullname",
            "groups",
            "optional_groups",
            "remove_groups",
            "password",
            "enforce_password",
            "createhome",
            "usergroup",
            "system",
            "allow_uid_change",
            "allow_gid_change",
        ],
    },
    StateFunction {
        module: "user",
        function: "absent",
        args: &["purge", "force"],
    },
    StateFunction {
        module: "group",
        function: "present",
        args: &["gid", "system", "members", "addusers", "delusers"],
    },
    StateFunction {
        module: "group",
        function: "absent",
        args: &[],
    },
    StateFunction {
        module: "ssh_auth",
        function: "present",
        args: &["user", "enc", "comment", "options", "config"],
    },
    StateFunction {
        module: "ssh_auth",
        function: "absent",
        args: &["user", "enc", "comment", "options", "config"],
    },
    StateFunction {
        module: "host",
        function: "present",
        args: &["ip"],
    },
    StateFunction {
        module: "host",
        function: "absent",
        args: &["ip"],
    },
    StateFunction {
        module: "cron",
        function: "present",
        args: &[
            "user",
            "minute",
            "hour",
            "daymonth",
            "month",
            "dayweek",
            "special",
            "identifier",
            "comment",
            "commented",
        ],
    },
    StateFunction {
        module: "cron",
        function: "absent",
        args: &["user", "identifier"],
    },
    StateFunction {
        module: "sysctl",
        function: "present",
        args: &["value", "config"],
    },
    StateFunction {
        module: "git",
        function: "latest",
        args: &[
            "target",
            "rev",
            "branch",
            "remote",
            "depth",
            "user",
            "force_reset",
        ],
    },
    StateFunction {
        module: "archive",
        function: "extracted",
        args: &[
            "source",
            "source_hash",
            "archive_format",
            "if_missing",
            "enforce_toplevel",
            "options",
            "tar_options",
            "overwrite",
            "user",
            "group",
        ],
    },
    StateFunction {
        module: "pip",
        function: "installed",
        args: &[
            "pkgs",
            "requirements",
            "bin_env",
            "pip_bin",
            "user",
            "upgrade",
            "no_index",
            "pre_releases",
            "index_url",
            "extra_index_url",
            "find_links",
        ],
    },
    StateFunction {
        module: "virtualenv",
        function: "managed",
        args: &[
            "python",
            "venv_bin",
            "system_site_packages",
            "pip_pkgs",
            "requirements",
            "user",
            "no_index",
            "index_url",
            "extra_index_url",
            "find_links",
        ],
    },
    // Salt's test states: placeholders and wiring checks in real trees.
    StateFunction {
        module: "test",
        function: "nop",
        args: &[],
    },
    StateFunction {
        module: "test",
        function: "succeed_without_changes",
        args: &[],
    },
    StateFunction {
        module: "test",
        function: "succeed_with_changes",
        args: &[],
    },
    StateFunction {
        module: "test",
        function: "fail_without_changes",
        args: &[],
    },
    StateFunction {
        module: "test",
        function: "fail_with_changes",
        args: &[],
    },
];

/// Modules that change the machine as a whole (packages, accounts, kernel settings, cron,
/// hosts): for operator runs and `apply --local`. Project runs will get a confined subset of
/// the catalogue and refuse these; they are not refused yet.
pub const OPERATOR_ONLY_MODULES: &[&str] = &[
    "pkg", "pkgrepo", "user", "group", "ssh_auth", "sysctl", "cron", "host",
];

impl StateFunction {
    /// Whether only operator runs and `apply --local` should use this function.
    pub fn operator_only(&self) -> bool {
        OPERATOR_ONLY_MODULES.contains(&self.module)
    }
}

/// Salt arguments corpus does not implement, refused by name (with what to do instead) rather
/// than accepted and ignored: a state that asks for them fails instead of doing something else.
pub const REFUSED_ARGS: &[(&str, &str)] = &[
    (
        "check_cmd",
        "run the check as a separate cmd.run state that requires this one",
    ),
    ("clean", "remove unwanted files with file.absent states"),
    (
        "retry",
        "make the state idempotent or retry inside the command (e.g. a shell loop)",
    ),
    (
        "stateful",
        "report changes through onchanges on a state that checks the result",
    ),
    ("failhard", "make the states after it require it"),
];

/// Arguments every state accepts besides its own: the guards corpus runs for every state, and
/// Salt's cache-reload and event flags, which have nothing to act on in corpus (no module
/// loader, no caches, no event bus): accepted as no-ops, as documented in the README.
pub const GLOBAL_ARGS: &[&str] = &[
    "name",
    "onlyif",
    "unless",
    "creates",
    "reload_modules",
    "reload_pillar",
    "reload_grains",
    "fire_event",
    "parallel",
];

impl StateFunction {
    /// Whether the function takes `arg` (its own, or a global one). Salt's `test` states take
    /// any keyword, as placeholders do.
    pub fn accepts(&self, arg: &str) -> bool {
        self.module == "test" || self.args.contains(&arg) || GLOBAL_ARGS.contains(&arg)
    }
}

/// Why `arg` is refused, if it is.
pub fn refused_arg(arg: &str) -> Option<&'static str> {
    REFUSED_ARGS
        .iter()
        .find(|(name, _)| *name == arg)
        .map(|(_, why)| *why)
}

/// Looks up `module.function`.
pub fn lookup(module: &str, function: &str) -> Option<&'static StateFunction> {
    CATALOGUE
        .iter()
        .find(|f| f.module == module && f.function == function)
}

/// The supported modules, in catalogue order.
pub fn modules() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for f in CATALOGUE {
        if !out.contains(&f.module) {
            out.push(f.module);
        }
    }
    out
}

/// The functions of `module`, in catalogue order (empty for an unknown module).
pub fn functions_of(module: &str) -> Vec<&'static str> {
    CATALOGUE
        .iter()
        .filter(|f| f.module == module)
        .map(|f| f.function)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_answers_lookups() {
        assert!(lookup("file", "managed").is_some());
        assert!(lookup("file", "manage").is_none());
        assert_eq!(
            modules(),
            [
                "file",
                "cmd",
                "service",
                "pkg",
                "pkgrepo",
                "user",
                "group",
                "ssh_auth",
                "host",
                "cron",
                "sysctl",
                "git",
                "archive",
                "pip",
                "virtualenv",
                "test"
            ]
        );
        assert_eq!(
            functions_of("service"),
            ["running", "dead", "restarted", "enabled", "disabled"]
        );
        assert!(functions_of("apt").is_empty());
        assert!(lookup("pkg", "installed").is_some_and(|f| f.operator_only()));
        assert!(lookup("file", "managed").is_some_and(|f| !f.operator_only()));
    }
}
