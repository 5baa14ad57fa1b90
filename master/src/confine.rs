//! What a project's states may do on a shared agent, checked at push on the rendered plan
//! before any job exists: run as the environment's own user and group only, touch files only
//! beneath the environment's root, manage only the environment's own systemd units, and never
//! use the modules that change the machine as a whole. A refusal names the file, line and
//! state id. The agent re-checks the same rules before it runs a phase (its own module); this
//! check exists so that a bad push fails at once, clearly, and changes nothing.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use corpus_states::{Chunk, ProjectPlan};
use serde_json::Value;

use crate::error::MasterError;
use crate::smep::EnvIdentity;

/// Modules that change the machine as a whole (packages, accounts, kernel settings, cron,
/// hosts, SSH keys): operator runs only, never a project's states.
// TODO: read `corpus_states::catalogue`'s operator-only flag once it is merged (engineer D2 is
// adding it); until then this is the one list the master checks.
pub const OPERATOR_ONLY_MODULES: &[&str] = &[
    "pkg", "pkgrepo", "user", "group", "ssh_auth", "sysctl", "cron", "host", "mount", "kmod",
    "network", "firewall", "iptables", "selinux", "timezone", "locale", "keyboard",
];

/// Arguments that choose the account a state acts as or gives files to.
const ACCOUNT_ARGS: &[&str] = &["runas", "user", "group"];

/// Who the environment is on its agent and where it may write.
pub struct Confinement<'a> {
    pub identity: EnvIdentity,
    /// The environment's root on the agent (`<agent root>/<env uuid>`).
    pub env_root: &'a str,
}

/// One refused state, before its location in the source is looked up.
struct Violation<'a> {
    chunk: &'a Chunk,
    reason: String,
}

impl Confinement<'_> {
    /// Refuses the first state of `plan` (phases in lifecycle order) that leaves the
    /// environment; `salt` is the pushed `.salt/` tree, read to find the state's line.
    pub fn check(
        &self,
        plan: &ProjectPlan,
        salt: &BTreeMap<String, String>,
    ) -> Result<(), MasterError> {
        for phase in corpus_states::Phase::ALL {
            let Some(phase_plan) = plan.phases.get(phase.as_str()) else {
                continue;
            };
            for chunk in &phase_plan.chunks {
                if let Some(violation) = self.check_chunk(chunk) {
                    return Err(refusal(violation, salt));
                }
            }
        }
        Ok(())
    }

    fn check_chunk<'c>(&self, chunk: &'c Chunk) -> Option<Violation<'c>> {
        let refuse = |reason: String| Some(Violation { chunk, reason });
        let function = format!("{}.{}", chunk.module, chunk.function);
        if OPERATOR_ONLY_MODULES.contains(&chunk.module.as_str()) {
            return refuse(format!(
                "{function} changes the whole machine and only operators may run it, not a project's states: ask an operator to apply it with corpus-agent apply --local"
            ));
        }
        for arg in ACCOUNT_ARGS {
            if let Some(value) = chunk.args.get(*arg)
                && !self.is_own_account(value)
            {
                return refuse(format!(
                    "{arg} {} is not this environment's account {}: a project's states run as their environment's own user and group; remove {arg} or use {{{{ common.user }}}}",
                    short(value),
                    self.identity.user()
                ));
            }
        }
        match chunk.module.as_str() {
            "file" => self
                .check_file(chunk)
                .map(|reason| Violation { chunk, reason }),
            "service" if !chunk.name.starts_with(&self.identity.service_prefix()) => {
                refuse(format!(
                    "{function} on unit {:?}: a project's states may only manage the environment's own units, whose names begin with {:?}",
                    chunk.name,
                    self.identity.service_prefix()
                ))
            }
            _ => None,
        }
    }

    /// A `file.*` state's path, `source` and symlink `target` must stay beneath the root.
    fn check_file(&self, chunk: &Chunk) -> Option<String> {
        if !self.is_inside(Path::new(&chunk.name)) {
            return Some(self.outside("name", &chunk.name));
        }
        for source in chunk.args.get("source").into_iter().flat_map(strings) {
            if source.starts_with("salt://") {
                continue;
            }
            let path = source.strip_prefix("file://").unwrap_or(source);
            if !self.is_inside(Path::new(path)) {
                return Some(self.outside("source", source));
            }
        }
        if chunk.function == "symlink"
            && let Some(target) = chunk.args.get("target").and_then(Value::as_str)
        {
            // A relative target is resolved from the link's directory, as the kernel does.
            let link_dir = Path::new(&chunk.name).parent().unwrap_or(Path::new("/"));
            if !self.is_inside(&link_dir.join(target)) {
                return Some(self.outside("symlink target", target));
            }
        }
        None
    }

    fn outside(&self, what: &str, path: &str) -> String {
        format!(
            "{what} {path:?} is outside the environment's root {}: a project's states may only touch files beneath it (use {{{{ common.project_root }}}} and salt:// sources)",
            self.env_root
        )
    }

    /// Whether the absolute `path`, `..` resolved lexically, is the root or beneath it.
    fn is_inside(&self, path: &Path) -> bool {
        normalize(path).is_some_and(|p| p.starts_with(self.env_root))
    }

    fn is_own_account(&self, value: &Value) -> bool {
        match value {
            Value::String(name) => {
                *name == self.identity.user() || *name == self.identity.uid().to_string()
            }
            Value::Number(number) => number.as_u64() == Some(u64::from(self.identity.uid())),
            _ => false,
        }
    }
}

/// `path` with `.` and `..` resolved without touching the disk; None when it is relative or
/// climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A string argument or each string of a list of them (Salt's source lists).
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// An argument as the refusal quotes it.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 64 {
        format!("{}...", text.chars().take(64).collect::<String>())
    } else {
        text
    }
}

/// The refusal, naming the `.salt/` file, the line of the state id there when it can be found,
/// and the state id.
fn refusal(violation: Violation<'_>, salt: &BTreeMap<String, String>) -> MasterError {
    let chunk = violation.chunk;
    let file = sls_file(&chunk.sls, salt);
    let line = file
        .as_ref()
        .and_then(|f| salt.get(f))
        .and_then(|text| id_line(text, &chunk.id));
    let location = match (&file, line) {
        (Some(file), Some(line)) => format!(".salt/{file}, line {line}"),
        (Some(file), None) => format!(".salt/{file}"),
        _ => format!(".salt/ sls {}", chunk.sls),
    };
    MasterError::Invalid {
        message: format!(
            "{location}, state {:?}: {}; nothing was changed",
            chunk.id, violation.reason
        ),
        file: Some(match &file {
            Some(file) => format!(".salt/{file}"),
            None => format!(".salt/{}.sls", chunk.sls.replace('.', "/")),
        }),
        line,
        state_id: Some(chunk.id.clone()),
    }
}

/// The file of a dotted SLS name: `web.nginx` is `web/nginx.sls` or `web/nginx/init.sls`.
fn sls_file(sls: &str, salt: &BTreeMap<String, String>) -> Option<String> {
    let base = sls.replace('.', "/");
    [format!("{base}.sls"), format!("{base}/init.sls")]
        .into_iter()
        .find(|f| salt.contains_key(f))
}

/// The 1-based line where `id` is declared (a top-level key, quoted or not).
fn id_line(text: &str, id: &str) -> Option<usize> {
    let keys = [format!("{id}:"), format!("\"{id}\":"), format!("'{id}':")];
    text.lines()
        .position(|line| keys.iter().any(|k| line.starts_with(k.as_str())))
        .map(|index| index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Platform;
    use serde_json::json;

    const ROOT: &str = "/srv/corpus/e1";

    fn confinement() -> Confinement<'static> {
        Confinement {
            identity: EnvIdentity::new(2, 1, Platform::Staging),
            env_root: ROOT,
        }
    }

    fn chunk(id: &str, module: &str, function: &str, name: &str, args: Value) -> Chunk {
        Chunk {
            id: id.into(),
            name: name.into(),
            sls: "build".into(),
            module: module.into(),
            function: function.into(),
            args: args.as_object().cloned().unwrap_or_default(),
            requisites: vec![],
        }
    }

    #[test]
    fn states_that_stay_in_the_environment_pass_and_the_others_are_refused() {
        let project = "/srv/corpus/e1/srv/projects/app";
        // (state, refused because ..., or None when allowed)
        let cases: Vec<(Chunk, Option<&str>)> = vec![
            (chunk("a", "cmd", "run", "make", json!({})), None),
            (
                chunk("a", "cmd", "run", "make", json!({"runas": "corpus-20130"})),
                None,
            ),
            (
                chunk("a", "cmd", "run", "make", json!({"runas": 20130})),
                None,
            ),
            (
                chunk("a", "cmd", "run", "id", json!({"runas": "root"})),
                Some("runas \"root\""),
            ),
            (
                chunk("a", "cmd", "run", "id", json!({"runas": 0})),
                Some("runas 0"),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/x"),
                    json!({"user": "bob", "contents": ""}),
                ),
                Some("user \"bob\""),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "directory",
                    &format!("{project}/d"),
                    json!({"group": "corpus-20130"}),
                ),
                None,
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/x"),
                    json!({"source": "salt://app/x.j2"}),
                ),
                None,
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/x"),
                    json!({"source": format!("{project}/project/x")}),
                ),
                None,
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/x"),
                    json!({"source": "/var/lib/corpus-agent/agent.key"}),
                ),
                Some("source \"/var/lib/corpus-agent/agent.key\""),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/x"),
                    json!({"source": ["salt://a", "file:///etc/shadow"]}),
                ),
                Some("source \"file:///etc/shadow\""),
            ),
            (
                chunk("a", "file", "managed", "/etc/cron.d/x", json!({})),
                Some("name \"/etc/cron.d/x\""),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "managed",
                    &format!("{project}/../../../../other/x"),
                    json!({}),
                ),
                Some("is outside the environment's root"),
            ),
            (
                chunk("a", "file", "absent", "relative/path", json!({})),
                Some("name \"relative/path\""),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "symlink",
                    &format!("{project}/current"),
                    json!({"target": "run"}),
                ),
                None,
            ),
            (
                chunk(
                    "a",
                    "file",
                    "symlink",
                    &format!("{project}/current"),
                    json!({"target": "../../../../../../etc"}),
                ),
                Some("symlink target"),
            ),
            (
                chunk(
                    "a",
                    "file",
                    "symlink",
                    &format!("{project}/key"),
                    json!({"target": "/var/lib/corpus-agent/agent.key"}),
                ),
                Some("symlink target"),
            ),
            (
                chunk("a", "service", "running", "corpus-20130-web", json!({})),
                None,
            ),
            (
                chunk(
                    "a",
                    "service",
                    "running",
                    "corpus-20130-web.service",
                    json!({}),
                ),
                None,
            ),
            (
                chunk("a", "service", "running", "ssh.service", json!({})),
                Some("on unit \"ssh.service\""),
            ),
            (
                chunk("a", "service", "dead", "corpus-20131-web", json!({})),
                Some("begin with \"corpus-20130-\""),
            ),
            (
                chunk("a", "pkg", "installed", "nginx", json!({})),
                Some("pkg.installed changes the whole machine"),
            ),
            (
                chunk("a", "user", "present", "eve", json!({})),
                Some("only operators"),
            ),
            (chunk("a", "test", "nop", "x", json!({})), None),
        ];
        let confinement = confinement();
        for (chunk, expected) in cases {
            let got = confinement.check_chunk(&chunk).map(|v| v.reason);
            match (expected, got) {
                (None, None) => {}
                (Some(want), Some(reason)) => {
                    assert!(reason.contains(want), "{chunk:?}: {reason}")
                }
                (want, got) => panic!("{chunk:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_refusal_names_the_file_line_and_state_id() {
        let mut salt = BTreeMap::new();
        salt.insert(
            "build.sls".to_owned(),
            "ok:\n  cmd.run:\n    - name: make\nsteal:\n  cmd.run:\n    - name: id\n    - runas: root\n"
                .to_owned(),
        );
        let mut plan = ProjectPlan::default();
        plan.phases.insert(
            "build".into(),
            corpus_states::Plan {
                chunks: vec![
                    chunk("ok", "cmd", "run", "make", json!({})),
                    chunk("steal", "cmd", "run", "id", json!({"runas": "root"})),
                ],
            },
        );
        match confinement().check(&plan, &salt) {
            Err(MasterError::Invalid {
                message,
                file,
                line,
                state_id,
            }) => {
                assert_eq!(file.as_deref(), Some(".salt/build.sls"));
                assert_eq!(line, Some(4));
                assert_eq!(state_id.as_deref(), Some("steal"));
                assert!(
                    message.starts_with(".salt/build.sls, line 4, state \"steal\": runas"),
                    "{message}"
                );
                assert!(message.ends_with("nothing was changed"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(
            normalize(Path::new("/a/./b/../c")),
            Some(PathBuf::from("/a/c"))
        );
        assert_eq!(normalize(Path::new("/..")), None);
        assert_eq!(normalize(Path::new("a/b")), None);
        // A sibling whose name starts like the root is not beneath it.
        assert!(!confinement().is_inside(Path::new("/srv/corpus/e10/x")));
        assert!(confinement().is_inside(Path::new(ROOT)));
    }
}
