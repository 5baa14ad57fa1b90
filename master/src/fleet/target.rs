//! Salt's targeting over the master's accepted agents: glob on the id (the default), `-L` list,
//! `-E` regex, `-G` grain glob, `-I` pillar glob, `-C` compound (`G@os:Debian and web* or
//! L@a,b`, `not`, parentheses, `E@`, `I@`, `L@`, `N@`) and `-N` nodegroup (a compound from the
//! master's settings). Matching is pure: the caller gives every agent's id, template grains and,
//! when [`Target::needs_pillar`], its compiled pillar.

use std::collections::BTreeMap;

use serde_json::Value as Json;

/// How deep nodegroups may name other nodegroups (`N@` inside a nodegroup): a cycle stops here.
const MAX_NODEGROUP_DEPTH: usize = 8;

/// Salt's target types (`salt -L`, `-E`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetType {
    Glob,
    List,
    Regex,
    Grain,
    Pillar,
    Compound,
    Nodegroup,
}

impl TargetType {
    pub fn name(self) -> &'static str {
        match self {
            TargetType::Glob => "glob",
            TargetType::List => "list",
            TargetType::Regex => "pcre",
            TargetType::Grain => "grain",
            TargetType::Pillar => "pillar",
            TargetType::Compound => "compound",
            TargetType::Nodegroup => "nodegroup",
        }
    }

    /// The type named `name` (as [`TargetType::name`] gives; empty is the default glob).
    pub fn parse(name: &str) -> Result<TargetType, TargetError> {
        Ok(match name {
            "" | "glob" => TargetType::Glob,
            "list" => TargetType::List,
            "pcre" | "regex" => TargetType::Regex,
            "grain" => TargetType::Grain,
            "pillar" => TargetType::Pillar,
            "compound" => TargetType::Compound,
            "nodegroup" => TargetType::Nodegroup,
            other => return Err(TargetError::UnknownType(other.chars().take(32).collect())),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "unknown target type {0:?}: use glob, list, pcre, grain, pillar, compound or nodegroup"
    )]
    UnknownType(String),
    #[error("target {target:?} is invalid: {why}")]
    Invalid { target: String, why: String },
    #[error(
        "nodegroup {0:?} is not defined: add it under `nodegroups:` in the master's config file and reload (SIGHUP)"
    )]
    UnknownNodegroup(String),
    #[error("target {0:?} matched no agent: see `corpus-master agents list` for the accepted ones")]
    NoMatch(String),
}

/// One agent as targeting sees it.
#[derive(Debug, Clone, Default)]
pub struct Minion {
    pub id: String,
    /// The grains templates see (`Grains::template_json`).
    pub grains: Json,
    /// Its compiled pillar; `None` when the target does not look at pillar.
    pub pillar: Option<Json>,
}

/// A parsed target expression.
#[derive(Debug, Clone)]
pub struct Target {
    expression: String,
    matcher: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    Glob(globset::GlobMatcher),
    List(Vec<String>),
    Regex(regex::Regex),
    Grain(KeyGlob),
    Pillar(KeyGlob),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// `key:sub:glob`: a nested key and a glob on its value. Salt tries every `:` as the split
/// between key and value, so a value may hold colons too.
#[derive(Debug, Clone)]
struct KeyGlob {
    text: String,
}

impl Target {
    /// Parses `expression` of type `kind`; `nodegroups` are the master's (name -> compound).
    pub fn parse(
        kind: TargetType,
        expression: &str,
        nodegroups: &BTreeMap<String, String>,
    ) -> Result<Target, TargetError> {
        let invalid = |why: String| TargetError::Invalid {
            target: expression.chars().take(200).collect(),
            why,
        };
        if expression.trim().is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let matcher = match kind {
            TargetType::Glob => glob(expression).map_err(invalid)?,
            TargetType::List => list(expression),
            TargetType::Regex => pcre(expression).map_err(invalid)?,
            TargetType::Grain => key_glob(expression).map(Expr::Grain).map_err(invalid)?,
            TargetType::Pillar => key_glob(expression).map(Expr::Pillar).map_err(invalid)?,
            TargetType::Compound => compound(expression, nodegroups, 0).map_err(|e| match e {
                Parse::Why(why) => invalid(why),
                Parse::Target(e) => e,
            })?,
            TargetType::Nodegroup => {
                nodegroup(expression.trim(), nodegroups, 0).map_err(|e| match e {
                    Parse::Why(why) => invalid(why),
                    Parse::Target(e) => e,
                })?
            }
        };
        Ok(Target {
            expression: expression.to_owned(),
            matcher,
        })
    }

    /// Whether matching looks at pillar (the caller compiles it only then).
    pub fn needs_pillar(&self) -> bool {
        self.matcher.needs_pillar()
    }

    pub fn matches(&self, minion: &Minion) -> bool {
        self.matcher.matches(minion)
    }

    /// The ids of `minions` this target selects, in their order; none is an error naming the
    /// target.
    pub fn select(&self, minions: &[Minion]) -> Result<Vec<String>, TargetError> {
        let ids: Vec<String> = minions
            .iter()
            .filter(|m| self.matches(m))
            .map(|m| m.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(TargetError::NoMatch(
                self.expression.chars().take(200).collect(),
            ));
        }
        Ok(ids)
    }
}

impl Expr {
    fn needs_pillar(&self) -> bool {
        match self {
            Expr::Pillar(_) => true,
            Expr::Not(e) => e.needs_pillar(),
            Expr::And(a, b) | Expr::Or(a, b) => a.needs_pillar() || b.needs_pillar(),
            _ => false,
        }
    }

    fn matches(&self, m: &Minion) -> bool {
        match self {
            Expr::Glob(g) => g.is_match(&m.id),
            Expr::List(ids) => ids.contains(&m.id),
            Expr::Regex(r) => r.is_match(&m.id),
            Expr::Grain(k) => k.matches(&m.grains),
            Expr::Pillar(k) => m.pillar.as_ref().is_some_and(|p| k.matches(p)),
            Expr::Not(e) => !e.matches(m),
            Expr::And(a, b) => a.matches(m) && b.matches(m),
            Expr::Or(a, b) => a.matches(m) || b.matches(m),
        }
    }
}

fn glob(pattern: &str) -> Result<Expr, String> {
    Ok(Expr::Glob(glob_matcher(pattern)?))
}

/// Salt's fnmatch: `*` matches `/` and `.` too.
fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("glob {pattern:?}: {e}"))
}

fn list(text: &str) -> Expr {
    Expr::List(
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Salt's `re.match`: anchored at the start only.
fn pcre(pattern: &str) -> Result<Expr, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(1 << 20)
        .build()
        .map(Expr::Regex)
        .map_err(|e| format!("regex {pattern:?}: {e}"))
}

fn key_glob(text: &str) -> Result<KeyGlob, String> {
    if !text.contains(':') {
        return Err(format!("{text:?} needs KEY:GLOB, e.g. os:Debian"));
    }
    // Checked once here, so matching never meets a bad glob.
    for (at, _) in text.match_indices(':') {
        glob_matcher(&text[at + 1..])?;
    }
    Ok(KeyGlob {
        text: text.to_owned(),
    })
}

impl KeyGlob {
    fn matches(&self, data: &Json) -> bool {
        self.text.match_indices(':').any(|(at, _)| {
            let (path, pattern) = (&self.text[..at], &self.text[at + 1..]);
            let Ok(glob) = glob_matcher(pattern) else {
                return false;
            };
            let mut value = data;
            for key in path.split(':') {
                value = match value {
                    Json::Object(map) => match map.get(key) {
                        Some(v) => v,
                        None => return false,
                    },
                    Json::Array(items) => {
                        match key.parse::<usize>().ok().and_then(|i| items.get(i)) {
                            Some(v) => v,
                            None => return false,
                        }
                    }
                    _ => return false,
                };
            }
            value_matches(value, &glob)
        })
    }
}

/// A grain or pillar value against a glob: a list matches when one of its items does.
fn value_matches(value: &Json, glob: &globset::GlobMatcher) -> bool {
    match value {
        Json::Array(items) => items.iter().any(|v| value_matches(v, glob)),
        Json::String(s) => glob.is_match(s),
        Json::Bool(b) => glob.is_match(if *b { "True" } else { "False" }),
        Json::Null => glob.is_match("None"),
        Json::Number(n) => glob.is_match(n.to_string()),
        Json::Object(_) => false,
    }
}

enum Parse {
    Why(String),
    Target(TargetError),
}

impl From<String> for Parse {
    fn from(why: String) -> Self {
        Parse::Why(why)
    }
}

fn nodegroup(
    name: &str,
    nodegroups: &BTreeMap<String, String>,
    depth: usize,
) -> Result<Expr, Parse> {
    if depth >= MAX_NODEGROUP_DEPTH {
        return Err(Parse::Why(format!(
            "nodegroups nest deeper than {MAX_NODEGROUP_DEPTH} (a cycle through {name:?}?)"
        )));
    }
    let compound_text = nodegroups
        .get(name)
        .ok_or_else(|| Parse::Target(TargetError::UnknownNodegroup(name.to_owned())))?;
    compound(compound_text, nodegroups, depth + 1)
}

/// Splits a compound expression into words and parentheses.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut word = word;
        while let Some(rest) = word.strip_prefix('(') {
            out.push("(".to_owned());
            word = rest;
        }
        let mut closing = 0;
        while let Some(rest) = word.strip_suffix(')') {
            closing += 1;
            word = rest;
        }
        if !word.is_empty() {
            out.push(word.to_owned());
        }
        out.extend(std::iter::repeat_n(")".to_owned(), closing));
    }
    out
}

/// Salt's compound matcher: `not` binds tightest, then `and`, then `or` (Python's precedence,
/// which Salt evaluates the expression with).
fn compound(
    text: &str,
    nodegroups: &BTreeMap<String, String>,
    depth: usize,
) -> Result<Expr, Parse> {
    let tokens = tokens(text);
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        nodegroups,
        depth,
    };
    let expr = parser.or()?;
    if let Some(extra) = tokens.get(parser.at) {
        return Err(Parse::Why(format!("unexpected {extra:?}")));
    }
    Ok(expr)
}

struct Parser<'a> {
    tokens: &'a [String],
    at: usize,
    nodegroups: &'a BTreeMap<String, String>,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn or(&mut self) -> Result<Expr, Parse> {
        let mut left = self.and()?;
        while self.peek() == Some("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, Parse> {
        let mut left = self.not()?;
        while self.peek() == Some("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, Parse> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, Parse> {
        let Some(word) = self.peek().map(str::to_owned) else {
            return Err(Parse::Why("it ends where a matcher was expected".into()));
        };
        self.at += 1;
        match word.as_str() {
            "(" => {
                let inner = self.or()?;
                if self.peek() != Some(")") {
                    return Err(Parse::Why("a parenthesis is not closed".into()));
                }
                self.at += 1;
                Ok(inner)
            }
            ")" | "and" | "or" => Err(Parse::Why(format!(
                "unexpected {word:?} where a matcher was expected"
            ))),
            _ => self.matcher(&word),
        }
    }

    fn matcher(&self, word: &str) -> Result<Expr, Parse> {
        let Some((prefix, rest)) = word.split_once('@').filter(|(p, _)| p.len() == 1) else {
            return Ok(glob(word)?);
        };
        Ok(match prefix {
            "G" => Expr::Grain(key_glob(rest)?),
            "I" => Expr::Pillar(key_glob(rest)?),
            "E" => pcre(rest)?,
            "L" => list(rest),
            "N" => nodegroup(rest, self.nodegroups, self.depth)?,
            other => {
                return Err(Parse::Why(format!(
                    "matcher {other}@ is not supported: use G@, I@, E@, L@, N@ or a glob"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet() -> Vec<Minion> {
        let minion = |id: &str, os: &str, roles: Json, pillar: Json| Minion {
            id: id.into(),
            grains: json!({"id": id, "os": os, "roles": roles, "net": {"eth0": ["10.0.0.1"]}}),
            pillar: Some(pillar),
        };
        vec![
            minion("web1", "Debian", json!(["web"]), json!({"tier": "front"})),
            minion(
                "web2",
                "Ubuntu",
                json!(["web", "cache"]),
                json!({"tier": "front"}),
            ),
            minion(
                "db1",
                "Debian",
                json!(["db"]),
                json!({"tier": "back", "db": {"engine": "pg"}}),
            ),
        ]
    }

    fn select(kind: TargetType, text: &str) -> Result<Vec<String>, TargetError> {
        let groups = BTreeMap::from([
            ("webs".to_owned(), "web*".to_owned()),
            ("debs".to_owned(), "G@os:Debian and not N@webs".to_owned()),
            ("loop".to_owned(), "N@loop".to_owned()),
        ]);
        Target::parse(kind, text, &groups)?.select(&fleet())
    }

    #[test]
    fn glob_list_and_regex_match_ids() -> Result<(), TargetError> {
        assert_eq!(select(TargetType::Glob, "web*")?, ["web1", "web2"]);
        assert_eq!(select(TargetType::Glob, "*")?.len(), 3);
        assert_eq!(select(TargetType::Glob, "web[2-9]")?, ["web2"]);
        assert_eq!(select(TargetType::List, "db1, web2,nope")?, ["web2", "db1"]);
        // Anchored at the start like Salt's re.match, not at the end.
        assert_eq!(select(TargetType::Regex, "w.b")?, ["web1", "web2"]);
        assert_eq!(select(TargetType::Regex, "(db|web)1$")?, ["web1", "db1"]);
        assert!(matches!(
            select(TargetType::Regex, "eb1"),
            Err(TargetError::NoMatch(_))
        ));
        assert!(matches!(
            select(TargetType::Regex, "("),
            Err(TargetError::Invalid { .. })
        ));
        Ok(())
    }

    #[test]
    fn grain_and_pillar_globs_walk_nested_keys_and_lists() -> Result<(), TargetError> {
        assert_eq!(select(TargetType::Grain, "os:Debian")?, ["web1", "db1"]);
        assert_eq!(select(TargetType::Grain, "os:*bun*")?, ["web2"]);
        assert_eq!(select(TargetType::Grain, "roles:cache")?, ["web2"]);
        assert_eq!(select(TargetType::Grain, "net:eth0:10.0.0.*")?.len(), 3);
        assert_eq!(select(TargetType::Pillar, "tier:front")?, ["web1", "web2"]);
        assert_eq!(select(TargetType::Pillar, "db:engine:pg")?, ["db1"]);
        assert!(Target::parse(TargetType::Pillar, "tier:x", &BTreeMap::new())?.needs_pillar());
        assert!(!Target::parse(TargetType::Grain, "os:x", &BTreeMap::new())?.needs_pillar());
        let err = select(TargetType::Grain, "os:Arch").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("\"os:Arch\" matched no agent")),
            "{err:?}"
        );
        assert!(matches!(
            select(TargetType::Grain, "os"),
            Err(TargetError::Invalid { .. })
        ));
        Ok(())
    }

    #[test]
    fn compound_follows_salts_precedence() -> Result<(), TargetError> {
        let c = |text| select(TargetType::Compound, text);
        // `and` binds tighter than `or`: (Debian and web*) or L@db1.
        assert_eq!(c("G@os:Debian and web* or L@db1")?, ["web1", "db1"]);
        // Parentheses change that: Debian and (web* or db1).
        assert_eq!(c("G@os:Debian and ( web* or L@db1 )")?, ["web1", "db1"]);
        assert_eq!(c("G@os:Ubuntu and (web* or L@db1)")?, ["web2"]);
        assert_eq!(c("not web* and G@os:Debian")?, ["db1"]);
        assert_eq!(c("not (web1 or db1)")?, ["web2"]);
        assert_eq!(c("E@web\\d and not I@tier:back")?, ["web1", "web2"]);
        assert_eq!(c("N@webs and G@roles:cache")?, ["web2"]);
        assert!(
            Target::parse(TargetType::Compound, "web1 or I@x:y", &BTreeMap::new())?.needs_pillar()
        );
        for bad in ["web1 and", "(web1", "web1 )", "or web1", "X@foo", "G@nokey"] {
            assert!(
                matches!(c(bad), Err(TargetError::Invalid { .. })),
                "{bad}: {:?}",
                c(bad)
            );
        }
        Ok(())
    }

    #[test]
    fn nodegroups_expand_and_unknown_or_cyclic_ones_are_named() -> Result<(), TargetError> {
        assert_eq!(select(TargetType::Nodegroup, "webs")?, ["web1", "web2"]);
        assert_eq!(select(TargetType::Nodegroup, "debs")?, ["db1"]);
        let err = select(TargetType::Nodegroup, "nope").err();
        assert_eq!(err, Some(TargetError::UnknownNodegroup("nope".into())));
        assert!(matches!(
            select(TargetType::Nodegroup, "loop"),
            Err(TargetError::Invalid { .. })
        ));
        assert!(matches!(
            select(TargetType::Compound, "N@nope"),
            Err(TargetError::UnknownNodegroup(_))
        ));
        Ok(())
    }
}
