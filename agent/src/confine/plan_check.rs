//! What a confined plan may do, checked by the privileged agent before it spawns the phase's
//! child. The master validated the plan at push time; this second check is the agent's own,
//! so a compromised or older master cannot widen what a project does. Landlock and the UID
//! drop enforce the same limits in the kernel; this check turns a violation into a clear
//! refusal naming the state instead of a permission error halfway through the phase.

use std::path::{Component, Path, PathBuf};

use corpus_states::catalogue::OPERATOR_ONLY_MODULES;
use corpus_states::{Chunk, Plan};
use serde_json::Value;

use super::Identity;

/// A state the environment may not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state {state:?} ({function}) is refused: {reason}")]
pub struct PlanRefusal {
    pub state: String,
    pub function: String,
    pub reason: String,
}

/// `path` with `.` and `..` resolved lexically, if it is absolute and never climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn beneath(path: &Path, root: &Path) -> bool {
    normalize(path).is_some_and(|p| p.starts_with(root))
}

/// Whether an account argument (`runas`, `user`, `group`) names the environment's own
/// account: its name, or its number as text or as a number (uid = gid).
pub fn is_own_account(value: &Value, id: &Identity) -> bool {
    match value {
        Value::String(name) => *name == id.user || *name == id.group || *name == id.uid.to_string(),
        Value::Number(n) => n.as_u64() == Some(u64::from(id.uid)),
        _ => false,
    }
}

fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Checks every state of `plan` against the environment's identity and root: the rules of the
/// master's push-time check (`master/src/confine.rs`), enforced again here.
pub fn check_plan(plan: &Plan, id: &Identity, env_root: &Path) -> Result<(), PlanRefusal> {
    plan.chunks
        .iter()
        .try_for_each(|chunk| check_chunk(chunk, id, env_root))
}

fn check_chunk(chunk: &Chunk, id: &Identity, env_root: &Path) -> Result<(), PlanRefusal> {
    let refuse = |reason: String| PlanRefusal {
        state: chunk.id.clone(),
        function: format!("{}.{}", chunk.module, chunk.function),
        reason,
    };
    if OPERATOR_ONLY_MODULES.contains(&chunk.module.as_str()) {
        return Err(refuse(format!(
            "module {:?} changes the whole machine: it is the operator's, not a project's",
            chunk.module
        )));
    }
    for key in ["runas", "user", "group"] {
        if let Some(value) = chunk.args.get(key)
            && !is_own_account(value, id)
        {
            return Err(refuse(format!(
                "{key} {value} is not the environment's own account ({:?})",
                id.user
            )));
        }
    }
    let outside = |what: &str, path: &str| {
        Err(refuse(format!(
            "{what} {path:?} is not beneath the environment root {}",
            env_root.display()
        )))
    };
    match chunk.module.as_str() {
        "file" => {
            if !beneath(Path::new(&chunk.name), env_root) {
                return outside("path", &chunk.name);
            }
            for source in chunk.args.get("source").into_iter().flat_map(strings) {
                let local = source.strip_prefix("file://").unwrap_or(source);
                if !source.starts_with("salt://") && !beneath(Path::new(local), env_root) {
                    return outside("source", source);
                }
            }
            if chunk.function == "symlink"
                && let Some(target) = chunk.args.get("target").and_then(Value::as_str)
            {
                // A relative target resolves from the link's directory, as the kernel does.
                let link_dir = Path::new(&chunk.name).parent().unwrap_or(Path::new("/"));
                if !beneath(&link_dir.join(target), env_root) {
                    return outside("symlink target", target);
                }
            }
            Ok(())
        }
        "service" if !chunk.name.starts_with(&id.service_prefix()) => Err(refuse(format!(
            "service {:?} is not the environment's: its units start with {:?}",
            chunk.name,
            id.service_prefix()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn identity() -> Identity {
        Identity {
            smep: 52320,
            uid: 52320,
            gid: 52320,
            user: "corpus-52320".into(),
            group: "corpus-52320".into(),
            ports: (52320..52330).collect(),
        }
    }

    fn chunk(module: &str, function: &str, name: &str, args: Value) -> Chunk {
        let args: Map<String, Value> = args.as_object().cloned().unwrap_or_default();
        Chunk {
            id: format!("{module}-{name}"),
            name: name.into(),
            sls: "build".into(),
            module: module.into(),
            function: function.into(),
            args,
            requisites: Vec::new(),
        }
    }

    fn check(c: Chunk) -> Result<(), PlanRefusal> {
        let plan = Plan { chunks: vec![c] };
        check_plan(&plan, &identity(), Path::new("/srv/corpus/env-a"))
    }

    #[test]
    fn a_project_plan_within_its_root_passes() {
        let plan = Plan {
            chunks: vec![
                chunk(
                    "file",
                    "managed",
                    "/srv/corpus/env-a/srv/projects/p/data/x",
                    json!({"user": "corpus-52320"}),
                ),
                chunk(
                    "cmd",
                    "run",
                    "make",
                    json!({"cwd": "/srv/corpus/env-a/srv/projects/p/project", "runas": "corpus-52320"}),
                ),
                chunk("service", "running", "corpus-52320-web", json!({})),
                chunk("test", "nop", "x", json!({})),
            ],
        };
        assert_eq!(
            check_plan(&plan, &identity(), Path::new("/srv/corpus/env-a")),
            Ok(())
        );
    }

    #[test]
    fn paths_outside_the_root_are_refused_even_through_dot_dot() {
        let e = check(chunk("file", "managed", "/etc/passwd", json!({})));
        assert!(
            e.is_err_and(|e| e.reason.contains("/etc/passwd") && e.state == "file-/etc/passwd")
        );
        let climb = "/srv/corpus/env-a/../env-b/srv/projects/p/pillar/pillar.json";
        assert!(check(chunk("file", "managed", climb, json!({}))).is_err());
        assert!(check(chunk("file", "absent", "relative/path", json!({}))).is_err());
        assert!(check(chunk("file", "directory", "/srv/corpus/env-ab", json!({}))).is_err());
        let inside = "/srv/corpus/env-a/x";
        let stolen = json!({"source": "/var/lib/corpus-agent/agent.key"});
        assert!(check(chunk("file", "managed", inside, stolen)).is_err());
        let escape = json!({"target": "../../../etc/shadow"});
        assert!(check(chunk("file", "symlink", "/srv/corpus/env-a/x/link", escape)).is_err());
        let salt = json!({"source": "salt://files/x"});
        assert_eq!(check(chunk("file", "managed", inside, salt)), Ok(()));
    }

    #[test]
    fn runas_and_owners_are_only_the_environment_user() {
        let e = check(chunk("cmd", "run", "id", json!({"runas": "root"})));
        assert!(e.is_err_and(|e| e.reason.contains("runas \"root\"")));
        assert!(check(chunk("cmd", "run", "id", json!({"runas": 0}))).is_err());
        assert_eq!(
            check(chunk("cmd", "run", "id", json!({"runas": 52320}))),
            Ok(())
        );
        assert_eq!(
            check(chunk("cmd", "run", "id", json!({"runas": "52320"}))),
            Ok(())
        );
        let inside = "/srv/corpus/env-a/x";
        assert!(check(chunk("file", "managed", inside, json!({"user": "root"}))).is_err());
        assert!(
            check(chunk(
                "file",
                "managed",
                inside,
                json!({"group": "corpus-52330"})
            ))
            .is_err()
        );
    }

    #[test]
    fn operator_modules_and_foreign_services_are_refused() {
        let e = check(chunk("user", "present", "bob", json!({})));
        assert!(e.is_err_and(|e| e.reason.contains("operator")));
        let git = chunk("git", "latest", "https://example.invalid/r", json!({}));
        assert_eq!(check(git), Ok(()));
        assert!(check(chunk("pkg", "installed", "nginx", json!({}))).is_err());
        let e = check(chunk("service", "running", "sshd", json!({})));
        assert!(e.is_err_and(|e| e.reason.contains("corpus-52320-")));
        assert!(check(chunk("service", "dead", "corpus-52330-web", json!({}))).is_err());
    }
}
