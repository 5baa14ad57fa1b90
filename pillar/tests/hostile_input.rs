//! Property tests of the parsers that read users' files: YAML after Jinja, the Jinja dialect
//! (with its pre-pass and the size guards it inserts) and pillar compile and merge. Each runs 256
//! cases in the normal suite; `PROPTEST_CASES=20000` runs a longer campaign. Inputs that once
//! found a bug are kept in `regressions` below.

use std::sync::Arc;

use corpus_pillar::yaml::{parse_yaml, yaml_to_json};
use corpus_pillar::{MemoryTree, PillarTree, TemplateContext, TemplateEngine, deep_merge};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

/// Text made of YAML's structural pieces, so that most cases reach the parser's deep paths.
fn yamlish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "a", "b: ", "- ", "  ", "\n", "[", "]", "{", "}", ", ", "&x ", "*x", "&y ", "*y", "'",
        "\"", "|\n", ">-\n", "# c", "!tag ", "? ", "0644", "yes", "~", "{{", "%", ":", "\t", "é",
    ]);
    prop::collection::vec(pieces, 0..80).prop_map(|p| p.concat())
}

/// Jinja-ish text: tags, operators, literals and names, in any order.
fn jinjaish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "{{ ",
        " }}",
        "{% ",
        " %}",
        "{# ",
        " #}",
        "set s = ",
        "s",
        "x",
        " ~ ",
        " + ",
        " * ",
        " - ",
        "'a'",
        "\"b\"",
        "1",
        "3",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ", ",
        ": ",
        "|upper",
        "|length",
        " if ",
        " else ",
        " is ",
        " not ",
        " and ",
        "for i in range(3)",
        "endfor",
        "if x",
        "endif",
        "do ",
        "import_yaml 'f.yaml' as y",
        "'%s' % ",
        "**",
        ".",
        "raw",
        "endraw",
        "{%}",
        "{#}",
        "\n",
        "pillar.a",
        "salt['pillar.get']('a')",
        "__guard(",
        "load_yaml as z",
        "endload",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
}

/// A Jinja expression over small values, with no literal the pre-pass rewrites for other
/// reasons (lists, dicts, a string `%`), so that the engine's result can be compared with plain minijinja.
fn expression() -> impl Strategy<Value = String> {
    let atom = prop::sample::select(vec![
        "1",
        "2",
        "'a'",
        "'bc'",
        "x",
        "y",
        "(x ~ 'z')",
        "(1 + 2)",
        "x|upper",
        "x|length",
        "y is number",
        "-y",
        "not x",
        "x.upper()",
        "true",
        "none",
        "(y * 2)",
        "'c' * 2",
        "y is divisibleby 2",
        "defined",
        "string",
        "range(2)|list|length",
        "x[0]",
        "namespace(a=x ~ 1).a",
        ")",
    ]);
    let op = prop::sample::select(vec![
        " ~ ",
        " + ",
        " - ",
        " * ",
        " == ",
        " != ",
        " < ",
        " and ",
        " or ",
        " in ",
        " ~ -",
        " if x else ",
        " is ",
        " is not ",
        " // ",
        " ** ",
        "|default(",
        ")|join(",
        " not in ",
        ", ",
        "|replace('s', ",
        "(",
    ]);
    (atom.clone(), prop::collection::vec((op, atom), 0..6)).prop_map(|(first, rest)| {
        let mut text = first.to_string();
        for (op, atom) in rest {
            text.push_str(op);
            text.push_str(atom);
        }
        text
    })
}

fn engine() -> TemplateEngine {
    let tree = MemoryTree::new().with("f.yaml", "k: v\n");
    TemplateEngine::new(Arc::new(tree))
}

fn context() -> TemplateContext {
    TemplateContext::new(json!({"a": "p"}), json!({}), json!({}), json!({}))
        .with_var("x", json!("s"))
        .with_var("y", json!(2))
}

/// A JSON value that YAML carries unchanged (no strings YAML 1.1 would retype).
fn pillar_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(Json::from),
        "s[0-9]{0,3}".prop_map(Json::from),
        any::<bool>().prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn pillar_mapping() -> impl Strategy<Value = Json> {
    prop::collection::btree_map("[a-c]{1,2}", pillar_value(), 0..4)
        .prop_map(|m| Json::Object(m.into_iter().collect()))
}

proptest! {
    #[test]
    fn yaml_parses_or_fails_cleanly(text in yamlish()) {
        if let Ok(value) = parse_yaml("f.sls", &text) {
            let _ = yaml_to_json(&value);
        }
    }

    #[test]
    fn templates_render_or_fail_cleanly(source in jinjaish()) {
        let _ = engine().render("t.sls", &source, &context());
    }

    #[test]
    fn the_size_guards_do_not_change_what_an_expression_means(expr in expression()) {
        let source = format!("{{{{ {expr} }}}}");
        let ours = engine().render("t.sls", &source, &context());
        let mut plain = minijinja::Environment::new();
        plain.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        plain.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let theirs = plain.render_str(&source, minijinja::context! { x => "s", y => 2 });
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", source),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{source}: ours {ours:?}, plain {theirs:?}"),
        }
    }

    #[test]
    fn compiling_a_pillar_merges_its_files_in_top_order(
        first in pillar_mapping(),
        second in pillar_mapping(),
    ) {
        let yaml = |v: &Json| serde_yaml::to_string(v).unwrap_or_default();
        let tree = MemoryTree::new()
            .with("top.sls", "base:\n  '*':\n    - one\n    - two\n")
            .with("one.sls", &yaml(&first))
            .with("two.sls", &yaml(&second));
        let compiled = PillarTree::new(Arc::new(tree))
            .compile("node1", &json!({}), &json!({}))
            .map(|p| p.data);
        prop_assert_eq!(compiled.ok(), Some(deep_merge(first, second)));
    }
}

/// Inputs the campaigns above found problems with, kept as plain cases: unary signs the guard
/// pass once took for binary operators (`--y`), a test's signed argument, and an operator
/// right after a bracketed group.
#[test]
fn regressions() {
    for text in ["", "a: &x [*x]\n", "- [[[[{{\n"] {
        let _ = parse_yaml("f.sls", text);
    }
    let render = |source: &str| engine().render("t.sls", source, &context());
    assert_eq!(render("{{ 1 ~ --y }}"), Ok("12".to_string()));
    assert!(render("{{ y is number + y }}").is_err());
    assert!(render("{{ 1 ~ y is number in 'a' }}").is_err());
    assert_eq!(render("{{ 1 or 1 ~ 1 is not not x }}"), Ok("1".to_string()));
    // A group ends an operand: `+` after it is binary, and `~` binds tighter than `+`.
    assert!(render("{{ (1 + 2) + 1 ~ 1 }}").is_err());
    assert_eq!(render("{{ (1 + 2) ~ 1 }}"), Ok("31".to_string()));
}
