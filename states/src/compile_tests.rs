//! Data-driven tests of the state compiler: a fixture tree in Salt's own syntax, the expected
//! plan (one line per chunk) or the expected error out.

use std::sync::Arc;

use serde_json::json;

use super::*;
use corpus_pillar::MemoryTree;

fn ctx() -> TemplateContext {
    TemplateContext::new(
        json!({"web": {"port": 8080, "vhosts": ["a.example", "b.example"]}, "motd": "hello"}),
        json!({"os": "Debian", "id": "web1"}),
        json!({"company": "acme"}),
        json!({"name": "prod"}),
    )
}

fn tree(files: &[(&str, &str)]) -> StateTree {
    let mut tree = MemoryTree::new();
    for (path, text) in files {
        tree.insert(path, text);
    }
    StateTree::new(Arc::new(tree))
}

/// One line per chunk: `index module.function id[ name] [kind:target,...]`.
fn show(plan: &Plan) -> String {
    plan.chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut line = format!("{i} {}.{} {}", c.module, c.function, c.id);
            if c.name != c.id {
                line.push_str(&format!(" name={}", c.name));
            }
            if !c.requisites.is_empty() {
                let reqs: Vec<String> = c
                    .requisites
                    .iter()
                    .map(|r| format!("{}:{}", kind_name(r.kind), r.target))
                    .collect();
                line.push_str(&format!(" [{}]", reqs.join(",")));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn plan_of(files: &[(&str, &str)], sls: &[&str]) -> Result<String, StateError> {
    tree(files).render_sls(sls, &ctx()).map(|r| show(&r.plan))
}

fn expect_plan(files: &[(&str, &str)], sls: &[&str], expected: &str) {
    match plan_of(files, sls) {
        Ok(got) => assert_eq!(got, expected.trim(), "plan of {sls:?}"),
        Err(err) => panic!("expected a plan for {sls:?}, got error: {err}"),
    }
}

fn expect_error(files: &[(&str, &str)], sls: &[&str], expected: &str) {
    match plan_of(files, sls) {
        Ok(plan) => panic!("expected error {expected:?}, got plan:\n{plan}"),
        Err(err) => assert_eq!(err.to_string(), expected, "error of {sls:?}"),
    }
}

#[test]
fn both_declaration_forms_and_short_form_parse() {
    expect_plan(
        &[(
            "web.sls",
            "/etc/motd:\n  file.managed:\n    - contents: hi\n\nnginx:\n  service:\n    - running\n    - enable: True\n\ncleanup: file.absent\n",
        )],
        &["web"],
        "0 file.managed /etc/motd\n1 service.running nginx\n2 file.absent cleanup",
    );
}

#[test]
fn chunk_carries_args_without_requisites_and_order() {
    let rendered = tree(&[(
        "web.sls",
        "conf:\n  file.managed:\n    - name: /etc/app.conf\n    - source: salt://app.conf\n    - template: jinja\n    - mode: '0644'\n    - order: 1\n    - require:\n      - file: /etc\n/etc:\n  file.directory: []\n",
    )])
    .render_sls(&["web"], &ctx());
    let chunks = rendered.map(|r| r.plan.chunks).unwrap_or_default();
    let conf = chunks.iter().find(|c| c.id == "conf");
    assert_eq!(
        conf.map(|c| (c.name.as_str(), c.sls.as_str(), json!(c.args))),
        Some((
            "/etc/app.conf",
            "web",
            json!({"source": "salt://app.conf", "template": "jinja", "mode": "0644"})
        ))
    );
    assert_eq!(
        conf.map(|c| c.key()),
        Some("file_|-conf_|-/etc/app.conf_|-managed".to_string())
    );
}

#[test]
fn rendering_uses_pillar_grains_common_env_and_sls() {
    expect_plan(
        &[(
            "web/init.sls",
            "{% for vhost in pillar.get('web:vhosts') %}\n/etc/nginx/{{ vhost }}:\n  file.managed:\n    - contents: {{ salt['pillar.get']('web:port') }} {{ grains.os }} {{ common.company }} {{ env.name }} {{ sls }} {{ tpldir }}\n{% endfor %}\n",
        )],
        &["web"],
        "0 file.managed /etc/nginx/a.example\n1 file.managed /etc/nginx/b.example",
    );
    let plan = tree(&[(
        "web/init.sls",
        "x:\n  file.managed:\n    - contents: {{ pillar.get('web:port') }} {{ grains.os }} {{ common.company }} {{ env.name }} {{ sls }} {{ tpldir }} {{ pillar.get('nope', 'dflt') }}\n",
    )])
    .render_sls(&["web"], &ctx())
    .map(|r| r.plan.chunks[0].args["contents"].clone());
    assert_eq!(plan, Ok(json!("8080 Debian acme prod web web dflt")));
}

#[test]
fn file_order_is_kept_within_an_sls() {
    expect_plan(
        &[(
            "a.sls",
            "z:\n  cmd.run: []\nb:\n  cmd.run: []\na:\n  cmd.run: []\n",
        )],
        &["a"],
        "0 cmd.run z\n1 cmd.run b\n2 cmd.run a",
    );
}

#[test]
fn included_states_come_before_the_includer_and_each_sls_renders_once() {
    let files = [
        (
            "web/init.sls",
            "include:\n  - common\n  - .tls\nweb:\n  cmd.run: []\n",
        ),
        ("web/tls.sls", "include:\n  - common\ntls:\n  cmd.run: []\n"),
        ("common.sls", "common:\n  cmd.run: []\n"),
        ("db.sls", "include:\n  - web\ndb:\n  cmd.run: []\n"),
    ];
    expect_plan(
        &files,
        &["web"],
        "0 cmd.run common\n1 cmd.run tls\n2 cmd.run web",
    );
    expect_plan(
        &files,
        &["db", "common"],
        "0 cmd.run common\n1 cmd.run tls\n2 cmd.run web\n3 cmd.run db",
    );
    let sls = tree(&files).render_sls(&["db"], &ctx()).map(|r| r.sls);
    assert_eq!(
        sls,
        Ok(vec![
            "common".into(),
            "web.tls".into(),
            "web".into(),
            "db".into()
        ])
    );
}

#[test]
fn order_numbers_first_and_last() {
    expect_plan(
        &[(
            "a.sls",
            "plain1:\n  cmd.run: []\nlast:\n  cmd.run:\n    - order: last\nminus:\n  cmd.run:\n    - order: -1\nten:\n  cmd.run:\n    - order: 10\none:\n  cmd.run:\n    - order: 1\nfirst:\n  cmd.run:\n    - order: first\nplain2:\n  cmd.run: []\n",
        )],
        &["a"],
        "0 cmd.run first\n1 cmd.run one\n2 cmd.run ten\n3 cmd.run plain1\n4 cmd.run plain2\n5 cmd.run minus\n6 cmd.run last",
    );
}

#[test]
fn each_requisite_pulls_its_target_first() {
    for kind in ["require", "watch", "onchanges", "onfail"] {
        let sls = format!(
            "svc:\n  service.running:\n    - name: nginx\n    - {kind}:\n      - file: conf\nconf:\n  file.managed:\n    - name: /etc/nginx.conf\n"
        );
        expect_plan(
            &[("a.sls", &sls)],
            &["a"],
            &format!(
                "0 file.managed conf name=/etc/nginx.conf\n1 service.running svc name=nginx [{kind}:0]"
            ),
        );
    }
}

#[test]
fn any_requisites_pull_their_targets_first_like_the_plain_ones() {
    for kind in ["require_any", "watch_any", "onchanges_any", "onfail_any"] {
        for (arg, on) in [(kind.to_string(), "svc"), (format!("{kind}_in"), "conf")] {
            let target = if on == "svc" {
                "file: conf"
            } else {
                "service: nginx"
            };
            let (svc_req, conf_req) = if on == "svc" {
                (format!("    - {arg}:\n      - {target}\n"), String::new())
            } else {
                (String::new(), format!("    - {arg}:\n      - {target}\n"))
            };
            let sls = format!(
                "svc:\n  service.running:\n    - name: nginx\n{svc_req}conf:\n  file.managed:\n    - name: /etc/nginx.conf\n{conf_req}"
            );
            expect_plan(
                &[("a.sls", &sls)],
                &["a"],
                &format!(
                    "0 file.managed conf name=/etc/nginx.conf\n1 service.running svc name=nginx [{kind}:0]"
                ),
            );
        }
    }
}

#[test]
fn prereq_runs_before_its_target_and_listen_does_not_reorder() {
    // `stop` pre-requires `deploy`: it comes first, its edge pointing forward.
    expect_plan(
        &[(
            "a.sls",
            "deploy:\n  file.managed:\n    - name: /srv/app\nstop:\n  service.dead:\n    - name: app\n    - prereq:\n      - file: deploy\n",
        )],
        &["a"],
        "0 service.dead stop name=app [prereq:1]\n1 file.managed deploy name=/srv/app",
    );
    expect_plan(
        &[(
            "a.sls",
            "deploy:\n  file.managed:\n    - name: /srv/app\n    - prereq_in:\n      - service: app\nstop:\n  service.dead:\n    - name: app\n",
        )],
        &["a"],
        "0 service.dead stop name=app [prereq:1]\n1 file.managed deploy name=/srv/app",
    );
    // A listener keeps its place, before its target here.
    expect_plan(
        &[(
            "a.sls",
            "svc:\n  service.running:\n    - name: app\n    - listen:\n      - file: conf\nconf:\n  file.managed:\n    - name: /etc/app\n",
        )],
        &["a"],
        "0 service.running svc name=app [listen:1]\n1 file.managed conf name=/etc/app",
    );
}

#[test]
fn each_requisite_in_form_adds_the_edge_to_the_target() {
    for kind in ["require", "watch", "onchanges", "onfail"] {
        let sls = format!(
            "svc:\n  service.running:\n    - name: nginx\nconf:\n  file.managed:\n    - name: /etc/nginx.conf\n    - {kind}_in:\n      - service: nginx\n"
        );
        expect_plan(
            &[("a.sls", &sls)],
            &["a"],
            &format!(
                "0 file.managed conf name=/etc/nginx.conf\n1 service.running svc name=nginx [{kind}:0]"
            ),
        );
    }
}

#[test]
fn requisite_targets_match_by_id_name_bare_id_and_sls() {
    let files = [
        (
            "base.sls",
            "pkgdir:\n  file.directory:\n    - name: /opt/app\nsetup:\n  cmd.run:\n    - name: make\n",
        ),
        (
            "app.sls",
            "include:\n  - base\nrun:\n  cmd.run:\n    - require:\n      - file: /opt/app\n      - setup\n      - sls: base\n      - cmd: make\n",
        ),
    ];
    expect_plan(
        &files,
        &["app"],
        "0 file.directory pkgdir name=/opt/app\n1 cmd.run setup name=make\n2 cmd.run run [require:0,require:1]",
    );
}

#[test]
fn requisites_reorder_stably() {
    // c requires a later state; the others keep their declaration order.
    expect_plan(
        &[(
            "a.sls",
            "a:\n  cmd.run: []\nc:\n  cmd.run:\n    - require:\n      - cmd: e\n      - cmd: d\nb:\n  cmd.run: []\nd:\n  cmd.run: []\ne:\n  cmd.run: []\n",
        )],
        &["a"],
        "0 cmd.run a\n1 cmd.run d\n2 cmd.run e\n3 cmd.run c [require:1,require:2]\n4 cmd.run b",
    );
}

#[test]
fn names_expand_to_one_chunk_each() {
    expect_plan(
        &[(
            "a.sls",
            "dirs:\n  file.directory:\n    - names:\n      - /srv/a\n      - /srv/b:\n        - mode: '0700'\nafter:\n  cmd.run:\n    - require:\n      - file: dirs\n",
        )],
        &["a"],
        "0 file.directory dirs name=/srv/a\n1 file.directory dirs name=/srv/b\n2 cmd.run after [require:0,require:1]",
    );
}

#[test]
fn extend_and_exclude() {
    expect_plan(
        &[
            (
                "base.sls",
                "conf:\n  file.managed:\n    - name: /etc/a\n    - contents: old\ngone:\n  cmd.run: []\nsvc:\n  service.running:\n    - name: a\n",
            ),
            (
                "over.sls",
                "include:\n  - base\nexclude:\n  - id: gone\nextend:\n  svc:\n    service:\n      - watch:\n        - file: conf\n",
            ),
        ],
        &["over"],
        "0 file.managed conf name=/etc/a\n1 service.running svc name=a [watch:0]",
    );
}

#[test]
fn highstate_follows_top_targeting() {
    let t = tree(&[
        (
            "top.sls",
            "base:\n  '*':\n    - common\n  'web*':\n    - web\n  'db*':\n    - db\n",
        ),
        ("common.sls", "common:\n  cmd.run: []\n"),
        ("web.sls", "web:\n  cmd.run: []\n"),
        ("db.sls", "db:\n  cmd.run: []\n"),
    ]);
    let web = t.render_highstate("web1", &ctx());
    assert_eq!(
        web.as_ref().map(|r| show(&r.plan)).ok().as_deref(),
        Some("0 cmd.run common\n1 cmd.run web")
    );
    assert_eq!(web.map(|r| r.sls), Ok(vec!["common".into(), "web".into()]));
    assert_eq!(
        t.top_sls("db7", &ctx()),
        Ok(vec!["common".into(), "db".into()])
    );
    let none = tree(&[("top.sls", "base:\n  'db*':\n    - db\n")]).render_highstate("web1", &ctx());
    assert_eq!(
        none.map_err(|e| e.to_string()),
        Err("top.sls: no sls targets agent 'web1': add a target matching it to top.sls".into())
    );
}

#[test]
fn render_file_uses_the_same_context() {
    let t = tree(&[(
        "app/app.conf",
        "port={{ pillar.get('web:port') }} dir={{ tpldir }} x={{ x }}\n",
    )]);
    assert_eq!(
        t.render_file("salt://app/app.conf", &ctx().with_var("x", json!(1))),
        Ok("port=8080 dir=app x=1\n".into())
    );
    assert_eq!(
        t.render_file("salt://nope.conf", &ctx())
            .map_err(|e| e.to_string()),
        Err("nope.conf: source file salt://nope.conf does not exist in the file root".into())
    );
    assert!(t.render_file("salt://../etc/passwd", &ctx()).is_err());
}

#[test]
fn errors_name_file_line_state_and_fix() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[(
                "a.sls",
                "ok:\n  cmd.run: []\nbad:\n  file.manage:\n    - name: /x\n",
            )],
            "a.sls, line 3, state 'bad': unknown state function 'file.manage': module 'file' has managed, directory, symlink, absent",
        ),
        (
            &[("a.sls", "bad:\n  apt.installed: []\n")],
            "a.sls, line 1, state 'bad': unknown state module 'apt': corpus supports file, cmd, service",
        ),
        (
            &[(
                "a.sls",
                "ok:\n  cmd.run: []\nbad:\n  cmd.run:\n    - name: x\n   - cwd: /\n",
            )],
            "a.sls, line 6, state 'bad': yaml error: ",
        ),
        (
            &[(
                "a.sls",
                "ok:\n  cmd.run: []\nbad:\n  cmd.run:\n    - name: {{ pillar.get('db:password') }}\n",
            )],
            "a.sls, line 5, state 'bad': jinja error: undefined value: pillar key 'db:password' is missing: add it to the pillar, or give a default: pillar.get('db:password', default)",
        ),
        (
            &[(
                "a.sls",
                "bad:\n  cmd.run:\n    - name: {{ pillar.db.password }}\n",
            )],
            "a.sls, line 3, state 'bad': jinja error: undefined value",
        ),
        (
            &[("a.sls", "bad:\n  cmd.run:\n    - name: {% if %}\n")],
            "a.sls, line 3, state 'bad': jinja error: syntax error",
        ),
        (
            &[(
                "a.sls",
                "a:\n  cmd.run:\n    - require:\n      - cmd: b\nb:\n  cmd.run:\n    - require:\n      - cmd: c\nc:\n  cmd.run:\n    - watch:\n      - cmd: a\n",
            )],
            "requisite cycle: cmd 'a' -> cmd 'b' -> cmd 'c' -> cmd 'a'; remove one of these requisites",
        ),
        (
            &[("a.sls", "a:\n  cmd.run:\n    - require:\n      - cmd: a\n")],
            "requisite cycle: cmd 'a' -> cmd 'a'; remove one of these requisites",
        ),
        (
            &[(
                "a.sls",
                "a:\n  cmd.run: []\nb:\n  cmd.run:\n    - onchanges:\n      - file: missing\n",
            )],
            "a.sls, line 3, state 'b': onchanges requisite 'file: missing' matches no state: check the id or name, and that its sls is included",
        ),
        (
            &[(
                "a.sls",
                "b:\n  cmd.run:\n    - watch_in:\n      - service: nginx\n",
            )],
            "a.sls, line 1, state 'b': watch_in requisite 'service: nginx' matches no state: check the id or name, and that its sls is included",
        ),
        (
            &[("a.sls", "include:\n  - nope\n")],
            "sls 'nope' not found (named in the include of a.sls): create nope.sls or nope/init.sls in the file root",
        ),
        (
            &[
                ("a.sls", "include:\n  - b\nx:\n  cmd.run: []\n"),
                ("b.sls", "x:\n  cmd.run: []\n"),
            ],
            "state id 'x' is declared in sls 'b' and in sls 'a': ids must be unique across the tree; rename one",
        ),
        (
            &[("a.sls", "x:\n  cmd.run:\n    - use:\n      - cmd: y\n")],
            "a.sls, line 1, state 'x': requisite 'use' is not supported: use require, watch, onchanges, onfail, listen, prereq, their _any forms or their _in forms",
        ),
        (
            &[("a.sls", "x:\n  cmd.run:\n    - order: soon\n")],
            "a.sls, line 1, state 'x': order: soon is not valid: use a whole number, first or last",
        ),
        (
            &[("a.sls", "x:\n  cmd: []\n")],
            "a.sls, line 1, state 'x': state 'x' gives module 'cmd' no function: write cmd.<function>, one of run",
        ),
        (
            &[("a.sls", "x:\n  cmd.run:\n    - name\n")],
            "a.sls, line 1, state 'x': state 'x' gives module 'cmd' two functions, 'run' and 'name': use one state id per function",
        ),
        (
            &[("a.sls", "- x\n")],
            "a.sls: an sls file must be a mapping of state ids: id: {module.function: [args]}",
        ),
        (
            &[("a.sls", "extend:\n  ghost:\n    cmd:\n      - cwd: /\n")],
            "a.sls, line 1, state 'ghost': extend names state 'ghost', which is not declared: include the sls that declares it",
        ),
    ];
    for (files, expected) in cases {
        match plan_of(files, &["a"]) {
            Ok(plan) => panic!("expected error {expected:?}, got plan:\n{plan}"),
            Err(err) => {
                let err = err.to_string();
                assert!(err.starts_with(expected), "\n got: {err}\nwant: {expected}");
            }
        }
    }
}

#[test]
fn jinja_error_in_an_imported_file_names_that_file() {
    expect_error(
        &[
            (
                "a.sls",
                "{% from 'map.jinja' import x %}\ny:\n  cmd.run: []\n",
            ),
            ("map.jinja", "\n{% set x = pillar.get('missing:key') %}\n"),
        ],
        &["a"],
        "map.jinja, line 2: jinja error: undefined value: pillar key 'missing:key' is missing: add it to the pillar, or give a default: pillar.get('missing:key', default) (included from a.sls, line 1)",
    );
}

#[test]
fn empty_sls_is_an_empty_plan() {
    expect_plan(&[("a.sls", "{# nothing #}\n")], &["a"], "");
}

#[test]
fn plan_round_trips_through_json() {
    let rendered = tree(&[(
        "a.sls",
        "conf:\n  file.managed:\n    - name: /etc/x\n    - contents: x\nsvc:\n  service.running:\n    - watch:\n      - file: conf\n",
    )])
    .render_sls(&["a"], &ctx());
    let plan = rendered.map(|r| r.plan).unwrap_or_default();
    let text = serde_json::to_string(&plan).unwrap_or_default();
    assert!(text.contains(r#""kind":"watch""#), "{text}");
    assert_eq!(serde_json::from_str::<Plan>(&text).ok(), Some(plan));
}

#[test]
fn highstate_from_a_directory_without_top_is_a_clear_error() {
    let t = StateTree::new(Arc::new(corpus_pillar::DirTree::new(
        "/nonexistent-corpus-root",
    )));
    assert_eq!(
        t.render_highstate("a", &ctx()).map_err(|e| e.to_string()),
        Err("top.sls: the file root has no top.sls: create one, or name the sls to apply".into())
    );
}

#[test]
fn highstate_from_a_directory() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join(format!("corpus-states-dir-{}", std::process::id()));
    std::fs::create_dir_all(root.join("web"))?;
    std::fs::write(root.join("top.sls"), "base:\n  'web*':\n    - web\n")?;
    std::fs::write(
        root.join("web/init.sls"),
        "{% from 'web/map.jinja' import port with context %}\n/etc/web.conf:\n  file.managed:\n    - source: salt://web/web.conf\n    - template: jinja\n    - contents: {{ port }}\n",
    )?;
    std::fs::write(
        root.join("web/map.jinja"),
        "{% set port = pillar.get('web:port') %}",
    )?;
    std::fs::write(root.join("web/web.conf"), "listen {{ pillar.web.port }}\n")?;
    let t = StateTree::new(Arc::new(corpus_pillar::DirTree::new(&root)));
    let rendered = t.render_highstate("web1", &ctx())?;
    assert_eq!(show(&rendered.plan), "0 file.managed /etc/web.conf");
    assert_eq!(rendered.plan.chunks[0].args["contents"], json!(8080));
    assert_eq!(
        t.render_file("salt://web/web.conf", &ctx())?,
        "listen 8080\n"
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

#[test]
fn a_thousand_templated_states_plan_quickly() {
    let mut sls = String::new();
    for i in 0..1000 {
        sls.push_str(&format!(
            "/srv/f{i}:\n  file.managed:\n    - contents: {{{{ pillar.get('web:port') }}}}-{i}\n"
        ));
        if i > 0 {
            sls.push_str(&format!("    - require:\n      - file: /srv/f{}\n", i - 1));
        }
    }
    let start = std::time::Instant::now();
    let rendered = tree(&[("big.sls", &sls)]).render_sls(&["big"], &ctx());
    let elapsed = start.elapsed();
    let plan = rendered.map(|r| r.plan).unwrap_or_default();
    assert_eq!(plan.chunks.len(), 1000);
    assert_eq!(plan.chunks[999].args["contents"], json!("8080-999"));
    assert_eq!(
        plan.chunks[999].requisites,
        vec![Requisite {
            kind: RequisiteKind::Require,
            target: 998
        }]
    );
    // Not a benchmark: a generous bound that only catches accidental quadratic blow-ups.
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "took {elapsed:?}"
    );
    eprintln!("1000 states planned in {elapsed:?}");
}
