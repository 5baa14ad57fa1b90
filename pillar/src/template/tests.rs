//! Data-driven tests of the Jinja dialect: a template in, the rendered text out.
use super::*;
use crate::tree::MemoryTree;
use serde_json::json;

fn engine(tree: MemoryTree) -> TemplateEngine {
    TemplateEngine::new(Arc::new(tree))
}

fn ctx() -> TemplateContext {
    TemplateContext::new(
        json!({"web": {"port": 8080, "hosts": ["a", "b"]}, "motd": "hi"}),
        json!({"os": "Debian", "id": "web1"}),
        json!({"company": "acme"}),
        json!({"name": "prod"}),
    )
}

fn render(source: &str) -> Result<String, RenderError> {
    engine(MemoryTree::new()).render("t.sls", source, &ctx())
}

#[test]
fn a_runaway_template_runs_out_of_fuel_instead_of_running_forever() {
    let start = std::time::Instant::now();
    let err =
        render("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(err.contains("fuel"), "{err}");
    // Not a timing assertion on speed: only that it ended at all, long before 10^10 steps.
    assert!(start.elapsed() < std::time::Duration::from_secs(120));
}

#[test]
fn renders_salt_lookups_and_filters() {
    let cases = [
        ("{{ pillar.motd }}", "hi"),
        ("{{ pillar['web']['port'] }}", "8080"),
        ("{{ pillar.get('web:port') }}", "8080"),
        ("{{ pillar.get('web:hosts:1') }}", "b"),
        ("{{ pillar.get('web:missing', 'dflt') }}", "dflt"),
        ("{{ pillar.get('web:missing', default='kw') }}", "kw"),
        ("{{ pillar.get('nope', none) is none }}", "True"),
        ("{{ salt['pillar.get']('web:port', 1) }}", "8080"),
        ("{{ salt['pillar.get']('x:y', 7) }}", "7"),
        ("{{ salt['grains.get']('os') }}", "Debian"),
        ("{{ grains.get('osfinger', 'unknown') }}", "unknown"),
        ("{{ grains['id'] }}", "web1"),
        ("{{ common.company }}/{{ env.name }}", "acme/prod"),
        ("{{ pillar.nope | default('d') }}", "d"),
        ("{% if pillar.nope %}yes{% else %}no{% endif %}", "no"),
        ("{{ pillar.web | yaml }}", "{hosts: [a, b], port: 8080}"),
        (
            "{{ {'k': 'a: b', 'n': '1'} | yaml }}",
            "{k: 'a: b', n: '1'}",
        ),
        (
            "{{ pillar.web | yaml(flow_style=False) }}",
            "hosts:\n- a\n- b\nport: 8080",
        ),
        (
            "{{ pillar.web | json }}",
            r#"{"hosts": ["a", "b"], "port": 8080}"#,
        ),
        ("{{ [1] | json(indent=2) }}", "[\n  1\n]"),
        (
            "{{ {'b': '<é>', 'a': 1} | tojson }}",
            r#"{"a": 1, "b": "\u003c\u00e9\u003e"}"#,
        ),
        ("{{ pillar.web.get('port') }}", "8080"),
        (
            "{% for k, v in pillar.web.items() %}{{ k }};{% endfor %}",
            "hosts;port;",
        ),
        ("{{ 'a,b'.split(',') | join('+') }}", "a+b"),
        ("{{ '{\"x\": 1}' | load_json | json }}", r#"{"x": 1}"#),
        ("line\n", "line\n"),
    ];
    for (source, expected) in cases {
        assert_eq!(
            render(source).as_deref(),
            Ok(expected),
            "template {source:?}"
        );
    }
}

#[test]
fn missing_pillar_key_without_default_names_key_and_file() {
    let err = render("a: 1\nb: {{ pillar.get('db:password') }}\n").unwrap_err();
    assert_eq!(err.file, "t.sls");
    assert_eq!(err.line, Some(2));
    assert!(err.message.contains("'db:password'"), "{err}");
    // Issue 11: the execution function behaves as Salt's, which returns '' without a default;
    // only the `pillar.get` method keeps corpus's strict lookup.
    assert_eq!(
        render("[{{ salt['pillar.get']('db:password') }}]").as_deref(),
        Ok("[]")
    );
    let err = render("x\n\n{{ pillar.db }}").unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("t.sls", Some(3)), "{err}");
    assert!(
        err.to_string()
            .starts_with("t.sls, line 3: jinja error: undefined value"),
        "{err}"
    );
}

#[test]
fn jinja_syntax_error_names_file_and_line() {
    let err = render("ok\n{% if %}\n").unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("t.sls", Some(2)));
    assert!(err.message.contains("syntax error"), "{err}");
}

#[test]
fn imports_resolve_in_the_tree_and_nowhere_else() {
    let tree = MemoryTree::new()
        .with(
            "macros.jinja",
            "{% macro hello(n) %}hello {{ n }}{% endmacro %}",
        )
        .with("web/map.jinja", "{% set port = pillar.get('web:port') %}")
        .with(
            "web/init.sls",
            "{% from './map.jinja' import port %}{{ port }}",
        )
        .with("web/broken.jinja", "{{ pillar.nope }}");
    let e = engine(tree);
    let c = ctx();
    assert_eq!(
        e.render(
            "x.sls",
            "{% import 'macros.jinja' as m %}{{ m.hello('w') }}",
            &c
        )
        .as_deref(),
        Ok("hello w")
    );
    assert_eq!(
        e.render(
            "web/init.sls",
            "{% from './map.jinja' import port %}{{ port }}",
            &c
        )
        .as_deref(),
        Ok("8080")
    );
    assert_eq!(
        e.render("x.sls", "{% include 'salt://macros.jinja' %}ok", &c)
            .as_deref(),
        Ok("ok")
    );
    let err = e
        .render("x.sls", "{% include '/etc/passwd' %}", &c)
        .unwrap_err();
    assert!(err.message.contains("absolute"), "{err}");
    let err = e
        .render("x.sls", "{% include '../../etc/passwd' %}", &c)
        .unwrap_err();
    assert!(err.message.contains(".."), "{err}");
    let err = e
        .render("x.sls", "{% include 'web/broken.jinja' %}", &c)
        .unwrap_err();
    assert_eq!(err.file, "web/broken.jinja", "{err}");
}

#[test]
fn traverse_walks_maps_and_lists() {
    let data = json!({"a": {"b": [10, {"c": true}]}});
    assert_eq!(traverse(&data, "a:b:0"), Some(&json!(10)));
    assert_eq!(traverse(&data, "a:b:1:c"), Some(&json!(true)));
    assert_eq!(traverse(&data, "a:x"), None);
    assert_eq!(traverse(&data, "a:b:9"), None);
}
