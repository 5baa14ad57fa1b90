//! Top files: which sls files apply to which agent. Pillar and state trees share the shape:
//! `base: {'<target>': [sls, ...]}`, where a target is a glob on the agent id unless the list
//! holds a `- match: <type>` entry (`glob`, `list`, `grain`, `compound` restricted to globs).

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::template::traverse;
use crate::yaml::yaml_key;

/// A top file does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TopError {
    pub file: String,
    pub message: String,
}

/// How a target is matched against an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetMatch {
    /// Shell glob on the agent id (`web*`, `db-?`, `[ab]*`).
    Glob,
    /// Comma-separated list of agent ids.
    List,
    /// `key:glob` against the grains (`os:Debian`, `roles:web` matches an element of a list).
    Grain,
}

/// One `target: [sls...]` entry of a top file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The saltenv the entry was declared under (`base` in most trees).
    pub saltenv: String,
    pub target: String,
    pub matcher: TargetMatch,
    pub sls: Vec<String>,
}

/// A parsed top file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopFile {
    pub entries: Vec<TopEntry>,
}

impl TopFile {
    /// Reads the YAML of a (rendered) top file; `file` is used in error messages.
    pub fn from_yaml(file: &str, yaml: &Yaml) -> Result<TopFile, TopError> {
        let error = |message: String| TopError {
            file: file.to_string(),
            message,
        };
        let envs = match yaml {
            Yaml::Null => return Ok(TopFile::default()),
            Yaml::Mapping(envs) => envs,
            _ => {
                return Err(error(
                    "a top file is a mapping of saltenv to targets: base: {'*': [common]}".into(),
                ));
            }
        };
        let mut entries = Vec::new();
        for (saltenv, targets) in envs {
            let saltenv = yaml_key(saltenv);
            let targets = match targets {
                Yaml::Null => continue,
                Yaml::Mapping(targets) => targets,
                _ => {
                    return Err(error(format!(
                        "saltenv '{saltenv}' must map targets to sls lists: {saltenv}: {{'*': [common]}}"
                    )));
                }
            };
            for (target, list) in targets {
                let target = yaml_key(target);
                let items = match list {
                    Yaml::Null => continue,
                    Yaml::Sequence(items) => items.as_slice(),
                    Yaml::String(_) => std::slice::from_ref(list),
                    _ => {
                        return Err(error(format!(
                            "target '{target}' must list sls names: '{target}': [web, db]"
                        )));
                    }
                };
                let mut matcher = TargetMatch::Glob;
                let mut sls = Vec::new();
                for item in items {
                    match item {
                        Yaml::String(name) => sls.push(name.clone()),
                        Yaml::Mapping(map) if map.len() == 1 => {
                            let Some((key, value)) = map.iter().next() else {
                                continue;
                            };
                            let key = yaml_key(key);
                            let value = yaml_key(value);
                            match key.as_str() {
                                "match" => {
                                    matcher = match value.as_str() {
                                        "glob" | "compound" => TargetMatch::Glob,
                                        "list" => TargetMatch::List,
                                        "grain" => TargetMatch::Grain,
                                        other => {
                                            return Err(error(format!(
                                                "target '{target}' uses match: {other}, which is not \
                                                 supported: use glob, list or grain"
                                            )));
                                        }
                                    }
                                }
                                // Salt's per-target options we accept and have nothing to do for.
                                "saltenv" | "env" | "ignore_missing" => {}
                                other => {
                                    return Err(error(format!(
                                        "target '{target}' has an unknown option '{other}': \
                                         expected sls names or '- match: glob|list|grain'"
                                    )));
                                }
                            }
                        }
                        other => {
                            return Err(error(format!(
                                "target '{target}' has an entry that is not an sls name: {}",
                                yaml_key(other)
                            )));
                        }
                    }
                }
                entries.push(TopEntry {
                    saltenv: saltenv.clone(),
                    target,
                    matcher,
                    sls,
                });
            }
        }
        Ok(TopFile { entries })
    }

    /// The sls names that apply to agent `id` with `grains`, in top-file order, each once.
    pub fn sls_for(&self, id: &str, grains: &Json) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for entry in &self.entries {
            if entry.matches(id, grains) {
                for sls in &entry.sls {
                    if !out.contains(sls) {
                        out.push(sls.clone());
                    }
                }
            }
        }
        out
    }
}

impl TopEntry {
    pub fn matches(&self, id: &str, grains: &Json) -> bool {
        match self.matcher {
            TargetMatch::Glob => glob_match(&self.target, id),
            TargetMatch::List => self.target.split(',').any(|t| t.trim() == id),
            TargetMatch::Grain => {
                let Some((key, pattern)) = self.target.rsplit_once(':') else {
                    return false;
                };
                match traverse(grains, key) {
                    Some(Json::Array(items)) => {
                        items.iter().any(|i| glob_match(pattern, &scalar(i)))
                    }
                    Some(value) => glob_match(pattern, &scalar(value)),
                    None => false,
                }
            }
        }
    }
}

fn scalar(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Shell-style glob (Python's fnmatch, case-sensitive): `*`, `?`, `[abc]`, `[a-z]`, `[!a]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with single-star backtracking.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_class(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        // An unclosed '[' is a literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((spi, sti)) => {
                pi = spi + 1;
                ti = sti + 1;
                star = Some((spi, sti + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after
/// the class), or `None` when the class is not closed.
fn match_class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_yaml;
    use serde_json::json;

    #[test]
    fn glob_cases() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("web*", "web1", true),
            ("web*", "db1", false),
            ("web-?", "web-1", true),
            ("web-?", "web-10", false),
            ("[ab]*", "alpha", true),
            ("[ab]*", "charlie", false),
            ("db[0-9]", "db7", true),
            ("db[!0-9]", "db7", false),
            ("db[!0-9]", "dbx", true),
            ("*.example.com", "web.example.com", true),
            ("*.example.com", "example.com", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("[oops", "[oops", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    fn top(text: &str) -> TopFile {
        let yaml = parse_yaml("top.sls", text).unwrap_or(Yaml::Null);
        TopFile::from_yaml("top.sls", &yaml).unwrap_or_default()
    }

    #[test]
    fn top_targets_by_glob_list_and_grain() {
        let t = top(
            "base:\n  '*':\n    - common\n  'web*':\n    - web\n    - common\n  'db1,db2':\n    - match: list\n    - db\n  'os:Deb*':\n    - match: grain\n    - debian\n  'roles:cache':\n    - match: grain\n    - cache\n",
        );
        let grains = json!({"os": "Debian", "roles": ["cache", "web"]});
        assert_eq!(
            t.sls_for("web1", &grains),
            ["common", "web", "debian", "cache"]
        );
        assert_eq!(t.sls_for("db2", &json!({})), ["common", "db"]);
        assert_eq!(t.sls_for("other", &json!({"os": "Alpine"})), ["common"]);
    }

    #[test]
    fn top_rejects_bad_shapes() {
        for (text, needle) in [
            ("- a\n", "mapping of saltenv"),
            ("base: [a]\n", "saltenv 'base'"),
            ("base:\n  '*': 3\n", "target '*'"),
            ("base:\n  '*':\n    - match: pcre\n    - a\n", "match: pcre"),
        ] {
            let yaml = parse_yaml("top.sls", text).unwrap_or(Yaml::Null);
            let err = TopFile::from_yaml("top.sls", &yaml).unwrap_err();
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
            assert!(err.to_string().starts_with("top.sls: "), "{err}");
        }
    }
}
