//! The bounds [`super::parse_yaml`] puts on a document: a linear pre-scan of its nesting depth,
//! and a value builder that charges every node, aliases included, against a budget.

use serde_yaml::Value as Yaml;

use super::yaml_key;

/// What a document may still expand into while it is being built.
#[derive(Debug, Clone, Copy)]
pub(super) struct ExpansionBudget {
    pub(super) nodes: usize,
    pub(super) bytes: usize,
    /// Set when a charge failed, so the caller reports the limit rather than the parser's
    /// wrapping of it.
    pub(super) exceeded: bool,
}

/// Builds a [`Yaml`] value as `Yaml`'s own `Deserialize` does, charging every node (aliases
/// included: the parser replays an anchor's events for each alias) against the budget, so an
/// expansion stops at the limit instead of after allocating it.
#[derive(Clone, Copy)]
pub(super) struct BuildYaml<'b>(pub(super) &'b std::cell::Cell<ExpansionBudget>);

impl BuildYaml<'_> {
    fn charge<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        let mut budget = self.0.get();
        match (budget.nodes.checked_sub(1), budget.bytes.checked_sub(bytes)) {
            (Some(nodes), Some(bytes)) if !budget.exceeded => {
                budget.nodes = nodes;
                budget.bytes = bytes;
                self.0.set(budget);
                Ok(())
            }
            _ => {
                budget.exceeded = true;
                self.0.set(budget);
                Err(E::custom("yaml expansion limit exceeded"))
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BuildYaml<'_> {
    type Value = Yaml;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Yaml, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BuildYaml<'_> {
    type Value = Yaml;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Yaml, E> {
        self.charge(0)?;
        Ok(Yaml::Bool(b))
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<Yaml, E> {
        self.charge(0)?;
        Ok(Yaml::Number(i.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Yaml, E> {
        self.charge(0)?;
        Ok(Yaml::Number(u.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Yaml, E> {
        self.charge(0)?;
        Ok(Yaml::Number(f.into()))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Yaml, E> {
        self.charge(s.len())?;
        Ok(Yaml::String(s.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Yaml, E> {
        self.charge(s.len())?;
        Ok(Yaml::String(s))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Yaml, E> {
        self.charge(0)?;
        Ok(Yaml::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Yaml, E> {
        self.visit_unit()
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Yaml, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, deserializer)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Yaml::Sequence(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        self.charge(0)?;
        let mut mapping = serde_yaml::Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            if mapping.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate entry with key {}",
                    quote_key(&key)
                )));
            }
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Yaml::Mapping(mapping))
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Yaml, A::Error> {
        use serde::de::VariantAccess;
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Yaml::Tagged(Box::new(serde_yaml::value::TaggedValue {
            tag: serde_yaml::value::Tag::new(tag),
            value,
        })))
    }
}

/// A duplicate key as the error quotes it: at most 64 characters, whatever the document holds.
fn quote_key(key: &Yaml) -> String {
    let key = yaml_key(key);
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("\"{}...\" ({} bytes)", key[..end].escape_debug(), key.len()),
        None => format!("\"{}\"", key.escape_debug()),
    }
}

/// Where nesting first goes deeper than `limit`: the depth reached and its 1-based line. Block
/// levels come from indentation (and `- `/`? ` indicators), flow levels from `[`/`{` outside
/// quotes; block scalars (`|`, `>`) and comments are skipped. An estimate that errs on the side of
/// counting, in one pass over the text.
pub(super) fn too_deep(text: &str, limit: usize) -> Option<(usize, usize)> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    let mut block_scalar_parent: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let mut block_depth = indents.len();
        let mut i = indent;
        if quote.is_none() && flow == 0 {
            if let Some(parent) = block_scalar_parent {
                if line.trim().is_empty() || indent > parent {
                    continue;
                }
                block_scalar_parent = None;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|&last| last > indent) {
                indents.pop();
            }
            if indents.last() != Some(&indent) {
                indents.push(indent);
            }
            block_depth = indents.len();
            while i + 1 < bytes.len() && matches!(bytes[i], b'-' | b'?') && bytes[i + 1] == b' ' {
                block_depth += 1;
                i += 2;
                while i < bytes.len() && bytes[i] == b' ' {
                    i += 1;
                }
            }
            if block_depth > limit {
                return Some((block_depth, number + 1));
            }
            if opens_block_scalar(line) {
                block_scalar_parent = Some(indent);
            }
        }
        let indicators_end = i;
        let token_start = |at: usize| {
            at == 0
                || matches!(
                    bytes[at - 1],
                    b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-' | b'?'
                )
        };
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(b'"') if b == b'\\' => i += 1,
                Some(b'\'') if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None => match b {
                    b'#' if token_start(i) && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                        break;
                    }
                    b'\'' | b'"' if quote_starts(bytes, i, flow, indicators_end) => quote = Some(b),
                    b'[' | b'{' if flow > 0 || token_start(i) => {
                        flow += 1;
                        if block_depth + flow > limit {
                            return Some((block_depth + flow, number + 1));
                        }
                    }
                    b']' | b'}' if flow > 0 => flow -= 1,
                    _ => {}
                },
            }
            i += 1;
        }
    }
    None
}

/// Whether a quote at `at` starts a quoted scalar, as YAML reads it: at the start of a value
/// (`key: '`, `- '`, `['`, `, '`, line start), not inside a plain scalar (`don't`, `a 'b`).
/// Missing a quote only makes the scan count more brackets; seeing one YAML does not would hide
/// brackets from it, so the rule is strict. `indicators_end` is where the line's leading `- `/`? `
/// indicators end: ` - '` after them is inside a plain scalar.
fn quote_starts(bytes: &[u8], at: usize, flow: usize, indicators_end: usize) -> bool {
    let Some(j) = bytes[..at].iter().rposition(|b| *b != b' ' && *b != b'\t') else {
        return true;
    };
    let spaced = j + 1 < at;
    match bytes[j] {
        b'[' | b'{' | b',' => true,
        b':' => spaced || flow > 0,
        b'-' | b'?' => spaced && j < indicators_end,
        _ => false,
    }
}

/// Whether a block-context line ends with a block scalar header (`key: |`, `- >-`, `|2 # c`).
fn opens_block_scalar(line: &str) -> bool {
    let content = line
        .find(" #")
        .map_or(line, |comment| &line[..comment])
        .trim_end();
    let header = content.rsplit(' ').next().unwrap_or_default();
    let before = content[..content.len() - header.len()].trim_end();
    header.starts_with(['|', '>'])
        && header[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'+' || b == b'-')
        && (before.is_empty() || before.ends_with([':', '-', '?']))
}
