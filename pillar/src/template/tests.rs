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
            // Salt's `tojson` keeps insertion order (checked against salt-call 3008.3).
            "{{ {'b': '<é>', 'a': 1} | tojson }}",
            r#"{"b": "\u003c\u00e9\u003e", "a": 1}"#,
        ),
        (
            "{{ {'b': 1, 'a': {'z': 1, 'y': [{'q': 1, 'p': 2}]}} | tojson(sort_keys=True) }}",
            r#"{"a": {"y": [{"p": 2, "q": 1}], "z": 1}, "b": 1}"#,
        ),
        (
            "{{ {'b': 1, 'a': {'z': 1, 'y': 2}} | json }}|{{ {'b': 1, 'a': 2} | json(sort_keys=False) }}",
            r#"{"a": {"y": 2, "z": 1}, "b": 1}|{"b": 1, "a": 2}"#,
        ),
        (
            "{% set d = {'b': 1} %}{% do d.update({'a': 2}) %}{{ d | tojson }}{{ {3: 'c', 'x': none} | tojson }}",
            r#"{"b": 1, "a": 2}{"3": "c", "x": null}"#,
        ),
        ("{{ pillar.web.get('port') }}", "8080"),
        (
            // The pillar's own key order, as Salt's dicts keep it (not sorted).
            "{% for k, v in pillar.web.items() %}{{ k }};{% endfor %}",
            "port;hosts;",
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

fn salt_ctx() -> TemplateContext {
    TemplateContext::new(
        json!({"nginx": {"lookup": {"port": 81}}, "users": {"alice": {"uid": 1000}}}),
        json!({
            "id": "web1", "os": "Debian", "os_family": "Debian", "osrelease": "12",
            "oscodename": "bookworm", "osmajorrelease": 12, "osfinger": "Debian-12",
            "roles": ["web", "db"], "ipv4": ["10.0.0.5", "127.0.0.1"],
        }),
        json!({}),
        json!("base"),
    )
}

fn render_with(tree: MemoryTree, file: &str, source: &str, ctx: &TemplateContext) -> String {
    match engine(tree).render(file, source, ctx) {
        Ok(text) => text,
        Err(err) => format!("ERROR: {err}"),
    }
}

/// Each case: template in, rendered text out, with `salt_ctx()` and no tree.
fn check(cases: &[(&str, &str)]) {
    for (source, expected) in cases {
        let got = render_with(MemoryTree::new(), "formula/init.sls", source, &salt_ctx());
        assert_eq!(got, *expected, "template {source:?}");
    }
}

#[test]
fn grains_filter_by_picks_by_grain_with_default_base_and_merge() {
    check(&[
        (
            "{{ salt['grains.filter_by']({'Debian': {'pkg': 'nginx'}, 'RedHat': {'pkg': 'nginx-rh'}}).pkg }}",
            "nginx",
        ),
        (
            "{{ salt.grains.filter_by({'Deb*': 'glob'}, grain='os') }}",
            "glob",
        ),
        (
            "{{ salt['grains.filter_by']({'default': 'd', 'Arch': 'a'}, grain='os') }}",
            "d",
        ),
        (
            "{{ salt['grains.filter_by']({'db': 'by-role'}, grain='roles') }}",
            "by-role",
        ),
        (
            "{% set m = salt['grains.filter_by']({'default': {'a': 1, 'n': {'x': 1}}, \
             'Debian': {'n': {'y': 2}}}, base='default', merge={'b': 3}) %}{{ m | json }}",
            r#"{"a": 1, "b": 3, "n": {"x": 1, "y": 2}}"#,
        ),
        (
            "{% set m = salt['grains.filter_by']({'Debian': {'port': 80}}, \
             merge=salt['pillar.get']('nginx:lookup')) %}{{ m.port }}",
            "81",
        ),
        (
            "{{ salt['grains.filter_by']({'Arch': 1}) is none }}",
            "True",
        ),
    ]);
}

#[test]
fn execution_functions_answer_as_salt() {
    check(&[
        ("[{{ salt['pillar.get']('missing') }}]", "[]"),
        ("[{{ salt.grains.get('missing') }}]", "[]"),
        ("{{ salt.pillar.get('users:alice:uid') }}", "1000"),
        (
            "{{ salt['pillar.get']('nginx:lookup', {'port': 1, 'user': 'www'}, merge=True) | json }}",
            r#"{"port": 81, "user": "www"}"#,
        ),
        ("{{ salt['grains.get']('roles:1') }}", "db"),
        (
            "{{ salt['grains.ls']() | join(',') }}",
            "id,ipv4,os,os_family,oscodename,osfinger,osmajorrelease,osrelease,roles",
        ),
        ("{{ salt['config.get']('id') }}", "web1"),
        (
            "{{ salt['file.join']('/etc', 'nginx', 'conf.d') }}",
            "/etc/nginx/conf.d",
        ),
        (
            "{{ salt['file.dirname']('/etc/nginx/nginx.conf') }}",
            "/etc/nginx",
        ),
        (
            "{{ salt['file.basename']('/etc/nginx/nginx.conf') }}",
            "nginx.conf",
        ),
        (
            "{% do salt['log.debug']('x') %}{{ salt.log.info('y') is none }}",
            "True",
        ),
        (
            "{{ salt['slsutil.merge']({'a': {'b': 1}}, {'a': {'c': 2}}) | json }}",
            r#"{"a": {"b": 1, "c": 2}}"#,
        ),
        (
            "{% set d = {'a': 1} %}{% do salt['defaults.merge'](d, {'b': 2}) %}{{ d | json }}",
            r#"{"a": 1, "b": 2}"#,
        ),
        (
            "{% set d = {'a': [1]} %}{% set u = salt['slsutil.update'](d, {'a': [2]}, merge_lists=True) %}{{ d | json }}",
            r#"{"a": [1, 2]}"#,
        ),
        (
            "{{ salt['slsutil.serialize']('json', {'a': 1}) }}",
            r#"{"a": 1}"#,
        ),
        (
            "{{ salt['slsutil.serialize']('json', {'b': '<é>', 'a': [1, {'d': 1, 'c': 2}]}) }}",
            r#"{"b": "<é>", "a": [1, {"d": 1, "c": 2}]}"#,
        ),
        (
            "{{ salt['mine.get']('*', 'network.ip_addrs') | length }}",
            "0",
        ),
        ("{{ salt['network.ip_addrs']() | join(',') }}", "10.0.0.5"),
        (
            "{{ salt.network.ip_addrs(include_loopback=True) | length }}",
            "2",
        ),
        ("{{ salt['pkg.version_cmp']('1.10', '1.9') }}", "1"),
        ("{{ salt['pkg.version_cmp']('2.0~rc1', '2.0') }}", "-1"),
        ("{{ 'pillar.get' in salt }}", "True"),
        ("{{ 'nope.nope' in salt }}", "False"),
    ]);
}

#[test]
fn host_functions_fail_on_the_master_naming_the_function() {
    for source in [
        "{{ salt['cmd.run']('id -u') }}",
        "{{ salt.cmd.which('nginx') }}",
        "{{ salt['user.info']('root') }}",
        "{{ salt['pkg.version']('nginx') }}",
        "{{ salt['file.file_exists']('/etc/passwd') }}",
    ] {
        let got = render_with(MemoryTree::new(), "t.sls", source, &salt_ctx());
        assert!(got.contains("cannot run on the master"), "{source}: {got}");
        let name = source.split(['\'', '(']).nth(1).unwrap_or_default();
        assert!(got.contains(name), "{source}: {got}");
    }
}

#[derive(Debug)]
struct FakeHost;

impl HostFunctions for FakeHost {
    fn cmd_run(&self, command: &str, _cwd: Option<&str>) -> Result<String, String> {
        Ok(format!("ran {command}"))
    }
    fn which(&self, name: &str) -> Option<String> {
        (name == "nginx").then(|| "/usr/sbin/nginx".to_string())
    }
    fn user_info(&self, name: &str) -> Option<Json> {
        (name == "root").then(|| json!({"name": "root", "uid": 0, "home": "/root"}))
    }
    fn pkg_version(&self, name: &str) -> String {
        if name == "nginx" {
            "1.22.1-9".into()
        } else {
            String::new()
        }
    }
    fn path_exists(&self, path: &str, kind: PathKind) -> bool {
        path == "/etc" && kind != PathKind::File
    }
    fn read_file(&self, path: &str) -> Option<String> {
        (path == "/etc/hostname").then(|| "web1\n".to_string())
    }
}

#[test]
fn host_functions_ask_the_host_given_by_the_agent() {
    let ctx = salt_ctx().with_host(Arc::new(FakeHost));
    let tree = MemoryTree::new().with("files/motd", "hello");
    let cases = [
        ("{{ salt['cmd.run']('id -u') }}", "ran id -u"),
        (
            "{{ salt.cmd.which('nginx') }}|{{ salt.cmd.has_exec('apache2') }}",
            "/usr/sbin/nginx|False",
        ),
        (
            "{{ salt['user.info']('root').home }}|{{ salt['user.info']('nobody') | length }}",
            "/root|0",
        ),
        (
            "{{ salt['pkg.version']('nginx') }}|{{ salt['pkg.version']('x') }}",
            "1.22.1-9|",
        ),
        (
            "{{ salt['file.directory_exists']('/etc') }}{{ salt['file.file_exists']('/etc') }}",
            "TrueFalse",
        ),
        ("{{ salt['cp.get_file_str']('/etc/hostname') }}", "web1\n"),
        ("{{ salt['file.read']('/etc/hostname') }}", "web1\n"),
        (
            "{{ salt['cp.get_file_str']('salt://files/motd') }}",
            "hello",
        ),
        (
            "{{ salt['cp.get_file_str']('salt://files/none') }}",
            "False",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(
            render_with(tree.clone(), "t.sls", source, &ctx),
            expected,
            "{source}"
        );
    }
}

#[test]
fn dicts_and_lists_are_mutable_as_in_python() {
    check(&[
        ("{% set d = {} %}{% do d.update({'a': 1}) %}{{ d.a }}", "1"),
        (
            "{% set d = {'a': 1} %}{% do d.update(b=2) %}{{ d | json }}",
            r#"{"a": 1, "b": 2}"#,
        ),
        (
            "{% set l = [] %}{% do l.append(1) %}{% do l.extend([2, 3]) %}{{ l | join(',') }}",
            "1,2,3",
        ),
        (
            "{% set d = {} %}{% do d.setdefault('k', []).append('v') %}{{ d.k[0] }}",
            "v",
        ),
        (
            "{% set d = {'a': 1, 'b': 2} %}{{ d.pop('a') }}{{ d | json }}",
            r#"1{"b": 2}"#,
        ),
        (
            "{% set d = {'a': {'x': 1}} %}{% set c = d.copy() %}{% do c.update({'b': 2}) %}{{ d | length }}",
            "1",
        ),
        (
            "{% set p = salt['pillar.get']('users') %}{% do p.alice.update({'shell': 'zsh'}) %}{{ p.alice.shell }}",
            "zsh",
        ),
        (
            "{% set l = [3, 1] %}{% do l.insert(0, 9) %}{{ l.pop() }}{{ l }}",
            "1[9, 3]",
        ),
        (
            "{% set l = ['a'] %}{% for x in l + ['b'] %}{{ x }}{% endfor %}",
            "ab",
        ),
        (
            "{% set d = {'b': 1, 'a': 2} %}{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
            "b=1;a=2;",
        ),
        (
            "{{ {'a': 1} == {'a': 1} }}|{{ [1, 2][1:] | list }}|{{ 'a' in {'a': 1} }}",
            "True|[2]|True",
        ),
        ("{% do [1].append(2) if false else none %}ok", "ok"),
        (
            "{% set ns = namespace(n=0) %}{% for i in [1, 2] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
            "3",
        ),
    ]);
}

#[test]
fn salt_context_variables_are_set() {
    let ctx = salt_ctx()
        .with_var("sls", json!("nginx.config"))
        .with_var("slspath", json!("nginx"))
        .with_var("tpldir", json!("nginx"))
        .with_var("tplpath", json!("nginx/config.sls"));
    let source = "{{ sls }}|{{ slspath }}|{{ slsdotpath }}|{{ slscolonpath }}|{{ tpldir }}|\
                  {{ tplpath }}|{{ tplfile }}|{{ saltenv }}|{{ opts.id }}|{{ opts['saltenv'] }}";
    assert_eq!(
        render_with(MemoryTree::new(), "nginx/config.sls", source, &ctx),
        "nginx.config|nginx|nginx|nginx|nginx|nginx/config.sls|nginx/config.sls|base|web1|base"
    );
    let root = salt_ctx()
        .with_var("sls", json!("top"))
        .with_var("slspath", json!(""))
        .with_var("tpldir", json!(""))
        .with_var("tplpath", json!("top.sls"));
    assert_eq!(
        render_with(
            MemoryTree::new(),
            "top.sls",
            "[{{ tpldir }}][{{ slspath }}]",
            &root
        ),
        "[.][]"
    );
}

#[test]
fn salt_statements_import_and_load_data() {
    let tree = MemoryTree::new()
        .with("nginx/defaults.yaml", "nginx:\n  port: 80\n  enabled: yes\n  mode: 0644\n")
        .with("nginx/osmap.json", r#"{"Debian": {"user": "www-data"}}"#)
        .with("nginx/banner.txt", "hello\n")
        .with(
            "nginx/map.jinja",
            "{% import_yaml 'nginx/defaults.yaml' as defaults %}\n\
             {% import_json tpldir ~ '/osmap.json' as osmap %}\n\
             {% set os = salt['grains.filter_by'](osmap, merge=salt['pillar.get']('nginx:lookup')) %}\n\
             {% do defaults.nginx.update(os) %}\n\
             {% set nginx = salt['pillar.get']('nginx', default=defaults.nginx, merge=True) %}\n",
        );
    let ctx = salt_ctx()
        .with_var("tpldir", json!("nginx"))
        .with_var("tplpath", json!("nginx/init.sls"));
    let cases = [
        (
            "{% from 'nginx/map.jinja' import nginx with context %}{{ nginx | json }}",
            r#"{"enabled": true, "lookup": {"port": 81}, "mode": 644, "port": 81, "user": "www-data"}"#,
        ),
        ("{% import_text './banner.txt' as b %}{{ b }}", "hello\n"),
        (
            "{% load_yaml as data %}\na: on\nb: [1, 2]\n{% endload %}{{ data.a }}/{{ data.b[1] }}",
            "True/2",
        ),
        ("{% load_json as j %}{\"k\": 1}{% endload %}{{ j.k }}", "1"),
        ("{{ 'a: yes' | load_yaml | json }}", r#"{"a": true}"#),
        ("{% import_yaml 'nginx/none.yaml' as x %}", "ERROR"),
    ];
    for (source, expected) in cases {
        let got = render_with(tree.clone(), "nginx/init.sls", source, &ctx);
        if expected == "ERROR" {
            assert!(
                got.contains("nginx/none.yaml") && got.contains("does not exist"),
                "{got}"
            );
        } else {
            assert_eq!(got, expected, "{source}");
        }
    }
}

#[test]
fn yaml_encode_refuses_a_list_as_salt_does() {
    let got = render_with(
        MemoryTree::new(),
        "formula/init.sls",
        "{{ [1] | yaml_encode }}",
        &salt_ctx(),
    );
    assert!(
        got.contains("yaml_encode() only works with YAML scalar data"),
        "{got}"
    );
}

#[test]
fn salt_filters_and_syntax() {
    check(&[
        ("{{ {'a': {'b': 1}} | traverse('a:b') }}", "1"),
        ("{{ {'a': {}} | traverse('a:x', 'dflt') }}", "dflt"),
        (
            "{{ 'nginx-1.2' | regex_replace('(\\\\w+)-([0-9.]+)', '\\\\2 of \\\\1') }}",
            "1.2 of nginx",
        ),
        (
            "{{ 'v12.5' | regex_search('v(\\\\d+)\\\\.(\\\\d+)') | join('/') }}",
            "12/5",
        ),
        ("{{ 'abc' | regex_match('b') is none }}", "True"),
        (
            "{{ 'ABC' | regex_match('a', ignorecase=True) is none }}",
            "False",
        ),
        (
            "{{ 'yes' | to_bool }}{{ 'off' | to_bool }}{{ 0 | to_bool }}{{ [1] | to_bool }}",
            "TrueFalseFalseTrue",
        ),
        (
            "{{ \"it's\" | quote }} {{ 'plain' | quote }}",
            "'it'\"'\"'s' plain",
        ),
        (
            "{{ 'a: b' | yaml_encode }} {{ 'x' | yaml_encode }} {{ true | yaml_encode }}",
            "\"a: b\" \"x\" true",
        ),
        // As salt-call 3008.3 prints them (PyYAML's double quotes, its escapes).
        (
            "{{ \"it's\" | yaml_encode }} {{ 'x\\ny' | yaml_encode }} {{ 'é' | yaml_encode }} {{ none | yaml_encode }} {{ 12 | yaml_encode }} {{ '' | yaml_encode }}",
            "\"it's\" \"x\\ny\" \"\\xE9\" null 12 \"\"",
        ),
        // Salt's regex filters return tuples, `(whole match,)` without groups.
        (
            "{{ 'v12.5' | regex_search('v(\\d+)\\.(\\d+)') }}",
            "('12', '5')",
        ),
        (
            "{{ 'abc' | regex_search('b') }} {{ 'abc' | regex_match('a') }}",
            "('b',) ('a',)",
        ),
        ("{{ 'abc' | regex_search('(x)?b') }}", "(None,)"),
        ("{{ ('v1.2' | regex_search('(\\d)\\.(\\d)'))[1] }}", "2"),
        // `%` with a variable on the left: formatting for a string, modulo for a number.
        (
            "{% set fmt = '%s-%d' %}{% set args = ('a', 3) %}{{ fmt % args }}",
            "a-3",
        ),
        (
            "{% set n = 7 %}{{ n % 3 }} {{ 10 % 4 }} {{ (n + 2) % 4 }}",
            "1 2 1",
        ),
        ("{{ {'b': [1]} | yaml(False) }}", "b:\n- 1"),
        ("{{ {'b': 1} | json }}", r#"{"b": 1}"#),
        (
            "{{ 'x' | sequence | first }}{{ ['y'] | sequence | first }}",
            "xy",
        ),
        ("{{ [] | is_list }}{{ 'x' | is_list }}", "TrueFalse"),
        ("{{ [1, 2, 1, 3] | unique | join(',') }}", "1,2,3"),
        (
            "{{ ['10.1', '192.1', '10.2'] | select('match', '^10') | join(',') }}",
            "10.1,10.2",
        ),
        ("{{ 'ABC' is match('a', ignorecase=True) }}", "True"),
        ("{{ '%s-%s' % ('a', 'b') }}", "a-b"),
        (
            "{{ '%s' % 'one' }}|{{ '%d items' % 3 }}|{{ '%05.1f' % 3.14159 }}",
            "one|3 items|003.1",
        ),
        ("{{ '%(name)s=%(v)r' % {'name': 'k', 'v': 'x'} }}", "k='x'"),
        ("{{ 'x' ~ '%s' % [1, 2] }}", "x[1, 2]"),
        (
            "{{ '%s' % none }}|{{ '%s' % true }}|{{ '100%%' % () }}",
            "None|True|100%",
        ),
        (
            "{{ '%s/%s' % (salt['file.dirname']('/a/b'), ['x']|join) }}",
            "/a/x",
        ),
        (
            "{% for i in [1, 2, 3, 4] %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            "13",
        ),
        (
            "{% raw %}{{ {'a': 1} }} '%s' % x{% endraw %}",
            "{{ {'a': 1} }} '%s' % x",
        ),
        ("{# {'a': [ #}ok", "ok"),
        ("{{ \"{'not': 'a dict'}\" }}", "{'not': 'a dict'}"),
    ]);
}

#[test]
fn makina_project_configuration_comes_from_common() {
    let ctx = TemplateContext::new(
        json!({}),
        json!({"id": "web1"}),
        json!({"name": "shop", "project_root": "/srv/shop", "project_dir": "/srv/shop/project",
               "data_dir": "/srv/shop/data", "pillar_dir": "/srv/shop/pillar", "user": "shop",
               "data": {"port": 8000}}),
        json!("prod"),
    );
    let source = "{% set cfg = salt['mc_project.get_configuration']('shop') %}\
                  {{ cfg.project_dir }}|{{ cfg.project_root }}|{{ cfg.salt_root }}|\
                  {{ cfg.data_root }}|{{ cfg.pillar_root }}|{{ cfg.data.port }}|\
                  {{ opts['ms_project'].name }}|{{ opts.ms_project.user }}|\
                  {{ salt['mc_utils.json_dump'](opts.ms_project.data) }}|\
                  {{ salt['mc_utils.json_load']('{\"a\": 1}').a }}";
    assert_eq!(
        render_with(MemoryTree::new(), "t.sls", source, &ctx),
        "/srv/shop|/srv/shop/project|/srv/shop/project/.salt|/srv/shop/data|/srv/shop/pillar|\
         8000|shop|shop|{\"port\":8000}|1"
    );
}

#[test]
fn an_unknown_execution_function_is_named_in_the_error() {
    for source in [
        "{{ salt['nope.fun']() }}",
        "{{ salt.nope.fun() }}",
        "{{ salt.pillar.nope() }}",
    ] {
        let got = render_with(MemoryTree::new(), "t.sls", source, &salt_ctx());
        assert!(
            got.contains("available") && got.contains("pillar.get"),
            "{source}: {got}"
        );
    }
}

#[test]
fn a_container_cannot_be_put_inside_itself() {
    for source in [
        "{% set d = {} %}{% do d.update({'s': d}) %}{{ d }}",
        "{% set d = {'a': {}} %}{% do d.a.update(s=d) %}",
        "{% set d = {} %}{% do d.setdefault('s', [d]) %}",
        "{% set l = [] %}{% do l.append(l) %}",
        "{% set l = [[]] %}{% do l[0].extend([(l,)]) %}",
        "{% set l = [] %}{% do l.insert(0, {'x': l}) %}",
        "{% set d = {} %}{% do salt['slsutil.update'](d, {'x': d}, recursive_update=False) %}",
    ] {
        let got = render_with(MemoryTree::new(), "t.sls", source, &salt_ctx());
        assert!(got.contains("inside itself"), "{source}: {got}");
    }
    check(&[(
        "{% set d = {} %}{% do d.update({'a': {}}) %}{% do d.update({'b': d.a}) %}ok",
        "ok",
    )]);
}

#[test]
fn a_template_keeps_its_final_newline_as_salt_renders_it() {
    let tree = MemoryTree::new().with("part.jinja", "included\n");
    let cases = [
        ("a\n", "a\n"),
        ("a", "a"),
        ("a\n\n", "a\n\n"),
        ("a\r\n", "a\r\n"),
        // Salt appends the newline after rendering, whatever the last tag stripped.
        ("{% if true %}a{% endif -%}\n", "a\n"),
        // Includes lose theirs, as in Salt.
        ("{% include 'part.jinja' %}|\n", "included|\n"),
    ];
    for (source, expected) in cases {
        let got = render_with(tree.clone(), "t.jinja", source, &ctx());
        assert_eq!(got, expected, "{source:?}");
    }
}

/// Issue 11: the three forms of `pillar.get` answer as Salt's (checked against salt-call by the
/// `pillar_get_forms` parity fixture): the execution function returns `''` without a default and
/// takes Salt's positional `merge`/`delimiter`; the dict's own `.get` returns `None` for a
/// missing top-level key, and only a missing `a:b` path (which Salt's dict never finds) is an
/// error.
#[test]
fn pillar_get_forms_answer_as_salt() {
    let cases = [
        ("[{{ salt['pillar.get']('web:nope') }}]", "[]"),
        ("[{{ salt.pillar.get('web:nope') }}]", "[]"),
        ("[{{ pillar.get('nope') }}]", "[None]"),
        ("{{ pillar.get('nope') is none }}", "True"),
        ("{% if not pillar.get('nope') %}falsy{% endif %}", "falsy"),
        ("[{{ grains.get('nope') }}]", "[None]"),
        (
            "{{ salt['pillar.get']('web|port', delimiter='|') }}",
            "8080",
        ),
        (
            "{{ salt['pillar.get']('web|port', '', False, False, '|') }}",
            "8080",
        ),
        (
            "{{ salt['pillar.get']('web', {'user': 'www'}, True) | json }}",
            r#"{"hosts": ["a", "b"], "port": 8080, "user": "www"}"#,
        ),
        (
            "{{ salt['pillar.get']('web:hosts', ['z', 'a'], merge=True) | json }}",
            r#"["z", "a", "b"]"#,
        ),
        (
            "{{ salt['pillar.get']('web:port', {'a': 1}, merge=True) }}",
            "8080",
        ),
        ("{{ salt['grains.get']('os', '', '|') }}", "Debian"),
        ("{{ salt['config.get']('web|port', '', '|') }}", "8080"),
    ];
    for (source, expected) in cases {
        assert_eq!(
            render(source).as_deref(),
            Ok(expected),
            "template {source:?}"
        );
    }
    let err = render("{{ pillar.get('web:nope') }}").unwrap_err();
    assert!(err.message.contains("'web:nope' is missing"), "{err}");
}

#[test]
fn a_path_through_a_list_looks_into_the_dicts_it_holds_as_salt() {
    let ctx = TemplateContext::new(
        json!({"users": [{"alice": {"uid": 2001}}, {"bob": {"shell": "/bin/zsh"}}]}),
        json!({}),
        json!({}),
        json!({}),
    );
    let out = engine(MemoryTree::new()).render(
        "t.sls",
        "{{ salt['pillar.get']('users:bob:shell') }} {{ salt['pillar.get']('users:0:alice:uid') }}",
        &ctx,
    );
    assert_eq!(out.as_deref(), Ok("/bin/zsh 2001"));
}

/// Issue 11: `slsutil.serialize('yaml', ...)` is PyYAML's dump with `default_flow_style=None`
/// (collections of scalars in flow style), the `yaml` filter flow style throughout.
#[test]
fn yaml_serializer_and_filter_use_pyyamls_styles() {
    let cases = [
        (
            "{{ salt['slsutil.serialize']('yaml', {'b': {'x': 1, 'y': [1, 2]}, 'a': 'z'}) }}",
            "a: z\nb:\n  x: 1\n  y: [1, 2]",
        ),
        (
            "{{ salt.slsutil.serialize('yaml', {'a': 'yes', 'b': 'x,y'}) }}",
            "{a: 'yes', b: 'x,y'}",
        ),
        (
            "{{ {'b': {'x': [1]}, 'a': 'x,y'} | yaml }}",
            "{a: 'x,y', b: {x: [1]}}",
        ),
        (
            "{{ {'b': {'x': [1]}, 'a': 'x,y'} | yaml(False) }}",
            "a: x,y\nb:\n  x:\n  - 1",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(
            render(source).as_deref(),
            Ok(expected),
            "template {source:?}"
        );
    }
}

/// Each distinct text is compiled once and cached under an internal name: the same file name
/// with another text renders that text, and errors name the file as the user knows it.
#[test]
fn texts_rendered_under_one_name_are_cached_apart_and_errors_name_the_file() {
    let engine = engine(MemoryTree::new());
    for _ in 0..2 {
        assert_eq!(
            engine
                .render("a/t.j2", "one {{ grains.os }}", &ctx())
                .as_deref(),
            Ok("one Debian")
        );
        assert_eq!(
            engine
                .render("a/t.j2", "two {{ grains.id }}", &ctx())
                .as_deref(),
            Ok("two web1")
        );
    }
    let err = engine
        .render("a/t.j2", "x\n{{ nope.x }}", &ctx())
        .unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("a/t.j2", Some(2)), "{err}");
    let err = engine.render("a/t.j2", "{% if %}", &ctx()).unwrap_err();
    assert_eq!(err.file, "a/t.j2", "{err}");
}

/// A tree that counts its reads, to see what an engine caches.
struct CountingTree {
    inner: MemoryTree,
    reads: std::sync::Mutex<Vec<String>>,
}

impl SourceTree for CountingTree {
    fn read(&self, rel: &str) -> Result<Option<String>, crate::tree::TreeError> {
        if let Ok(mut reads) = self.reads.lock() {
            reads.push(rel.to_string());
        }
        self.inner.read(rel)
    }
}

#[test]
fn an_imported_file_is_parsed_once_per_engine_and_each_import_gets_its_own_copy() {
    let tree = Arc::new(CountingTree {
        inner: MemoryTree::new().with("app/defaults.yaml", "app:\n  port: 80\n  users: [a]\n"),
        reads: Default::default(),
    });
    let engine = TemplateEngine::new(tree.clone());
    let source = "{% import_yaml 'app/defaults.yaml' as d %}{% do d.app.update({'port': d.app.port + 1}) %}\
                  {% do d.app.users.append('b') %}{{ d | tojson }}";
    for file in ["app/one.sls", "app/two.sls", "app/three.conf"] {
        let got = engine.render(file, source, &ctx());
        assert_eq!(
            got.as_deref().ok(),
            Some(r#"{"app": {"port": 81, "users": ["a", "b"]}}"#),
            "{file}: {got:?}"
        );
    }
    let reads = tree.reads.lock().map(|r| r.clone()).unwrap_or_default();
    let defaults = reads.iter().filter(|r| *r == "app/defaults.yaml").count();
    assert_eq!(defaults, 1, "{reads:?}");
    // Failures are not cached: a missing file still fails.
    let missing = engine.render("x.sls", "{% import_yaml 'app/none.yaml' as n %}", &ctx());
    assert!(missing.is_err());
}

/// The variables the clones of a context share are made again when what they come from
/// changes: a replaced pillar, other grains, another `opts` override, another tree.
#[test]
fn shared_variables_follow_the_data_they_were_made_from() -> Result<(), RenderError> {
    let engine = engine(MemoryTree::new());
    let source = "{{ pillar.motd }} {{ grains.id }} {{ opts.id }} {{ opts.test }} {{ env.name }}";
    let base = ctx();
    assert_eq!(
        engine.render("t", source, &base)?,
        "hi web1 web1 False prod"
    );
    // A clone shares them.
    assert_eq!(
        engine.render("t", source, &base.clone())?,
        "hi web1 web1 False prod"
    );
    let mut other = base.clone();
    other.pillar = Arc::new(json!({"motd": "bye"}));
    other.grains = Arc::new(json!({"id": "web2"}));
    other.env = Arc::new(json!({"name": "dev"}));
    assert_eq!(
        engine.render("t", source, &other)?,
        "bye web2 web2 False dev"
    );
    let overridden = other.clone().with_var("opts", json!({"test": true}));
    assert_eq!(
        engine.render("t", source, &overridden)?,
        "bye web2 web2 True dev"
    );
    // The first context again, through the same slot: its own data, not the last render's.
    assert_eq!(
        engine.render("t", source, &base)?,
        "hi web1 web1 False prod"
    );
    let other_tree = TemplateEngine::new(Arc::new(MemoryTree::new().with("m.jinja", "tree 2")));
    assert_eq!(
        other_tree.render(
            "t",
            "{{ salt['cp.get_file_str']('salt://m.jinja') }}",
            &base
        )?,
        "tree 2"
    );
    Ok(())
}
