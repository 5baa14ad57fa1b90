//! Operator runs (`corpus-master apply|run`) on real agents: targeting (custom grains from the
//! agents' configs included), the highstate from the master's file_root with its `salt://`
//! files, per-agent pillar, batches, `--async` and `jobs show`, render errors, a stopped agent,
//! a path leaving file_root and a timed-out call stopped on its agent. Every state writes only
//! under the test's temp dir.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use corpus_tests::{Agent, Master, wait_until};
use serde_json::Value;

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `--json` lines of a run: one object per agent.
fn returns(out: &Output) -> anyhow::Result<Vec<Value>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn agents_of(values: &[Value]) -> BTreeSet<String> {
    values
        .iter()
        .filter_map(|v| v["agent"].as_str().map(str::to_owned))
        .collect()
}

/// The config of agent `id` (its state under `root/agent-ID`), with `grains` (YAML flow
/// mapping) as its custom grains and an enrollment token file.
fn write_agent_config(
    master: &Master,
    root: &Path,
    id: &str,
    grains: &str,
) -> anyhow::Result<PathBuf> {
    let token_file = root.join(format!("{id}.token"));
    if !token_file.exists() {
        std::fs::write(&token_file, format!("{}\n", master.token("10m")?))?;
    }
    let state_dir = root.join(format!("agent-{id}"));
    let config = root.join(format!("{id}.yaml"));
    std::fs::write(
        &config,
        format!(
            "master: {}\nca: {}\nid: {id}\nstate_dir: {}\nroot: {}\ntoken_file: {}\n\
             log_level: info\ngrains: {grains}\n",
            master.url(),
            master.ca().display(),
            state_dir.display(),
            state_dir.join("root").display(),
            token_file.display()
        ),
    )?;
    Ok(config)
}

/// Starts agent `id` from a config carrying the custom grains `grains`.
fn agent_with_grains(
    master: &Master,
    root: &Path,
    id: &str,
    grains: &str,
) -> anyhow::Result<Agent> {
    let config = write_agent_config(master, root, id, grains)?;
    Agent::spawn_with_config(root, id, &config)
}

fn write_trees(root: &Path, out: &Path) -> anyhow::Result<()> {
    let states = root.join("states");
    let pillar = root.join("pillar");
    std::fs::create_dir_all(&states)?;
    std::fs::create_dir_all(&pillar)?;
    let out = out.display();
    // Two agents by a custom grain of their config, the third by name.
    std::fs::write(
        states.join("top.sls"),
        "base:\n  'roles:web':\n    - match: grain\n    - web\n  'db1':\n    - db\n",
    )?;
    // `pillar_seen` renders on the agent (raw on the master): what the agent was sent.
    let seen = format!(
        "pillar_seen:\n  file.managed:\n    - name: {out}/{{{{ grains['id'] }}}}.pillar\n    - template: jinja\n    - contents: '{{% raw %}}{{{{ pillar | json }}}}{{% endraw %}}'\n"
    );
    std::fs::write(
        states.join("web.sls"),
        format!(
            "web_conf:\n  file.managed:\n    - name: {out}/{{{{ grains['id'] }}}}.conf\n    - contents: \"role=web secret={{{{ pillar['secret'] }}}}\"\n{seen}"
        ),
    )?;
    std::fs::write(
        states.join("db.sls"),
        format!(
            "db_conf:\n  file.managed:\n    - name: {out}/db1.conf\n    - contents: role=db\n{seen}"
        ),
    )?;
    // Invalid YAML for db1 only.
    std::fs::write(
        states.join("broken.sls"),
        "ok_{{ grains['id'] }}:\n  test.nop: []\n{% if grains['id'] == 'db1' %}\nbad: [unclosed\n{% endif %}\n",
    )?;
    let mut top = String::from("base:\n  '*':\n    - common\n");
    for id in ["web1", "web2", "db1"] {
        top.push_str(&format!("  '{id}':\n    - s_{id}\n"));
        std::fs::write(
            pillar.join(format!("s_{id}.sls")),
            format!("secret: {id}-secret\n"),
        )?;
    }
    std::fs::write(pillar.join("top.sls"), top)?;
    std::fs::write(pillar.join("common.sls"), "tier: all\n")?;
    Ok(())
}

#[test]
fn operator_runs_target_batch_and_report_each_agent() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let out_dir = root.path().join("out");
    std::fs::create_dir_all(&out_dir)?;
    write_trees(root.path(), &out_dir)?;
    let states = root.path().join("states").display().to_string();
    let pillar = root.path().join("pillar").display().to_string();
    // A nodegroup by custom grain, as Salt's `nodegroups:` in the master config.
    let config = root.path().join("master.yaml");
    std::fs::write(&config, "nodegroups:\n  webs: 'G@roles:web'\n")?;
    let config = config.display().to_string();
    let master = Master::start_with(
        root.path(),
        &[
            "--file-root",
            &states,
            "--pillar-root",
            &pillar,
            "--config",
            &config,
        ],
    )?;
    let mut agents = Vec::new();
    for (id, roles) in [("web1", "[web]"), ("web2", "[web, cache]"), ("db1", "[db]")] {
        let grains = format!("{{roles: {roles}, site: {{rack: r1}}}}");
        agents.push(agent_with_grains(&master, root.path(), id, &grains)?);
    }
    for id in ["web1", "web2", "db1"] {
        master.wait_agent(id, "accepted", true)?;
    }
    let console = |args: &[&str]| master.console(args, None);

    // Highstate: changes, then a no-op, then --test after a file went away.
    let first = console(&["apply", "*"])?;
    assert!(first.status.success(), "{}", text(&first));
    let shown = String::from_utf8_lossy(&first.stdout).into_owned();
    for id in ["web1", "web2", "db1"] {
        assert!(shown.contains(&format!("  Summary for {id}\n")), "{shown}");
    }
    assert!(shown.contains("Succeeded: 2 (changed=2)"), "{shown}");
    assert!(
        shown.contains("Total: 3 targeted, 3 succeeded, 0 failed"),
        "{shown}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("web2.conf"))?,
        "role=web secret=web2-secret\n"
    );
    assert!(out_dir.join("db1.conf").exists());
    let again = console(&["apply", "*"])?;
    let shown = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        !shown.contains("changed=1") && !shown.contains("changed=2"),
        "{shown}"
    );
    std::fs::remove_file(out_dir.join("web2.conf"))?;
    let test = console(&["apply", "-L", "web2", "--test", "--json"])?;
    assert!(test.status.success(), "{}", text(&test));
    let test = returns(&test)?;
    assert_eq!(agents_of(&test), BTreeSet::from(["web2".to_owned()]));
    let states_of = test[0]["return"].as_object().cloned().unwrap_or_default();
    let conf = states_of
        .iter()
        .find(|(k, _)| k.contains("web_conf"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert_eq!(conf["result"], Value::Null, "{test:?}");
    assert!(
        !out_dir.join("web2.conf").exists(),
        "--test changed nothing"
    );

    // Each agent was sent its own pillar only.
    for id in ["web1", "web2", "db1"] {
        let seen = std::fs::read_to_string(out_dir.join(format!("{id}.pillar")))?;
        assert!(seen.contains(&format!("{id}-secret")), "{id}: {seen}");
        for other in ["web1", "web2", "db1"].iter().filter(|o| **o != id) {
            assert!(!seen.contains(&format!("{other}-secret")), "{id}: {seen}");
        }
    }

    // Every target type selects exactly the expected agents.
    let expect = |args: &[&str], ids: &[&str]| -> anyhow::Result<()> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = console(&all)?;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let got = returns(&out)?;
        let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(agents_of(&got), want, "{args:?}");
        assert_eq!(got.len(), ids.len(), "{args:?}");
        Ok(())
    };
    expect(&["-G", "id:web*", "test.ping"], &["web1", "web2"])?;
    expect(&["-G", "roles:web", "test.ping"], &["web1", "web2"])?;
    expect(&["-G", "roles:cache", "test.ping"], &["web2"])?;
    expect(
        &["-G", "site:rack:r1", "test.ping"],
        &["web1", "web2", "db1"],
    )?;
    expect(
        &["-C", "G@roles:db or G@roles:cache", "test.ping"],
        &["web2", "db1"],
    )?;
    expect(&["-N", "webs", "test.ping"], &["web1", "web2"])?;
    expect(&["-C", "N@webs and not web1", "test.ping"], &["web2"])?;
    expect(&["-L", "web1,db1", "test.ping"], &["web1", "db1"])?;
    expect(
        &["-C", "G@id:web* and not web2 or L@db1", "test.ping"],
        &["web1", "db1"],
    )?;
    expect(&["-E", "web[12]$", "test.ping"], &["web1", "web2"])?;
    expect(&["-I", "secret:db1-*", "test.ping"], &["db1"])?;
    let get = console(&["run", "db1", "grains.get", "id", "--json"])?;
    assert_eq!(
        returns(&get)?.first().map(|r| r["return"].clone()),
        Some(Value::from("db1")),
        "{}",
        text(&get)
    );
    let none = console(&["run", "nomatch*", "test.ping"])?;
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("\"nomatch*\" matched no agent"),
        "{}",
        text(&none)
    );

    // A render error fails that agent only, naming the file.
    let broken = console(&["apply", "-L", "web1,db1", "broken", "--json"])?;
    assert!(!broken.status.success(), "{}", text(&broken));
    for ret in returns(&broken)? {
        match ret["agent"].as_str() {
            Some("web1") => assert_eq!(ret["status"], "succeeded", "{ret}"),
            _ => {
                assert_eq!(ret["status"], "failed", "{ret}");
                assert!(
                    ret["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("broken.sls") && e.contains(", line ")),
                    "{ret}"
                );
            }
        }
    }

    // --batch 1: never two agents at once.
    let batched = console(&["run", "*", "cmd.run", "sleep 0.3", "--batch", "1", "--json"])?;
    assert!(batched.status.success(), "{}", text(&batched));
    let mut spans: Vec<(i64, i64)> = returns(&batched)?
        .iter()
        .map(|r| {
            (
                r["started_unix_ms"].as_i64().unwrap_or(0),
                r["finished_unix_ms"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3);
    assert!(
        spans.windows(2).all(|w| w[1].0 >= w[0].1) && spans.iter().all(|s| s.1 - s.0 >= 300),
        "{spans:?}"
    );

    // --async prints the id at once; jobs show has every return once the run ends.
    let started = console(&["run", "*", "cmd.run", "echo hi", "--async"])?;
    assert!(started.status.success(), "{}", text(&started));
    let run_id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert_eq!(run_id.len(), 20, "{run_id}");
    wait_until("the async run finished", || {
        Ok(master.console_json(&["jobs", "show", &run_id])?["status"] == "finished")
    })?;
    let shown = master.console_json(&["jobs", "show", &run_id])?;
    let returned = shown["returns"].as_array().cloned().unwrap_or_default();
    assert_eq!(returned.len(), 3, "{shown}");
    assert!(returned.iter().all(|r| r["return"] == "hi"), "{shown}");
    let listed = master.console_json(&["jobs", "list"])?;
    assert!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|j| j["id"] == run_id.as_str() && j["user"] != "")),
        "{listed}"
    );
    let listed_run = listed
        .as_array()
        .and_then(|l| l.iter().find(|j| j["id"] == run_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(
        listed_run["target"] == "*"
            && listed_run["function"] == "cmd.run"
            && listed_run["targeted"] == 3
            && listed_run["succeeded"] == 3
            && listed_run["started_unix_ms"]
                .as_i64()
                .is_some_and(|t| t > 0),
        "{listed_run}"
    );
    let show_text = console(&["jobs", "show", &run_id])?;
    assert!(
        String::from_utf8_lossy(&show_text.stdout).contains("web2:\n    hi\n"),
        "{}",
        text(&show_text)
    );

    // A stopped agent is reported as not connected, and the run fails.
    agents[2].proc.kill();
    master.wait_agent("db1", "accepted", false)?;
    let partial = console(&["run", "*", "test.ping"])?;
    assert!(!partial.status.success(), "{}", text(&partial));
    let shown = String::from_utf8_lossy(&partial.stdout).into_owned();
    assert!(
        shown.contains("db1:\n    not connected: agent db1 is not connected"),
        "{shown}"
    );
    assert!(shown.contains("web1:\n    True\n"), "{shown}");
    assert!(
        shown.contains("Total: 3 targeted, 2 succeeded, 1 failed (1 not connected)"),
        "{shown}"
    );
    Ok(())
}

/// Live processes whose command line is exactly `words` (from /proc).
fn processes_running(words: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = words.join("\0").into_bytes();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.strip_suffix(b"\0").unwrap_or(&c) == wanted.as_slice())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn operator_runs_ship_salt_files_stop_timed_out_calls_and_follow_custom_grains()
-> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let out = root.path().join("out");
    let states = root.path().join("states");
    let pillar = root.path().join("pillar");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(states.join("site/tree/sub"))?;
    std::fs::create_dir_all(&pillar)?;
    let o = out.display();
    std::fs::write(states.join("top.sls"), "base:\n  '*':\n    - site\n")?;
    std::fs::write(
        states.join("site/init.sls"),
        format!(
            "site_conf:\n  file.managed:\n    - name: {o}/site.conf\n    - source: salt://site/site.conf.j2\n    - template: jinja\n    - mode: '0640'\n\
             site_tree:\n  file.recurse:\n    - name: {o}/tree\n    - source: salt://site/tree\n"
        ),
    )?;
    // Rendered on the agent: its grains (a custom one), its pillar, an imported macro file.
    std::fs::write(
        states.join("site/site.conf.j2"),
        "{% from 'site/map.jinja' import port %}id={{ grains['id'] }} role={{ grains['roles'][0] }} port={{ port }} secret={{ pillar['secret'] }}\n",
    )?;
    std::fs::write(states.join("site/map.jinja"), "{% set port = 8080 %}\n")?;
    std::fs::write(states.join("site/tree/a.txt"), "alpha\n")?;
    std::fs::write(states.join("site/tree/sub/b.txt"), "beta\n")?;
    // Paths leaving file_root: by `..`, and through a link to a directory outside.
    std::fs::write(root.path().join("outside.txt"), "not for agents\n")?;
    std::os::unix::fs::symlink(root.path(), states.join("up"))?;
    std::fs::write(
        states.join("dots.sls"),
        format!(
            "leak:\n  file.managed:\n    - name: {o}/leak1\n    - source: salt://../outside.txt\n"
        ),
    )?;
    std::fs::write(
        states.join("link.sls"),
        format!(
            "leak:\n  file.managed:\n    - name: {o}/leak2\n    - source: salt://up/outside.txt\n"
        ),
    )?;
    std::fs::write(
        states.join("script.sls"),
        "run_script:\n  cmd.script:\n    - source: salt://site/hello.sh\n    - template: jinja\n",
    )?;
    std::fs::write(
        states.join("site/hello.sh"),
        format!("#!/bin/sh\necho \"hello {{{{ grains['id'] }}}}\" > {o}/script.out\n"),
    )?;
    std::fs::write(
        states.join("failing.sls"),
        "will_fail:\n  cmd.run:\n    - name: 'echo no; exit 3'\n",
    )?;
    std::fs::write(pillar.join("top.sls"), "base:\n  '*':\n    - s\n")?;
    std::fs::write(pillar.join("s.sls"), "secret: s3\n")?;
    let master = Master::start_with(
        root.path(),
        &[
            "--file-root",
            &states.display().to_string(),
            "--pillar-root",
            &pillar.display().to_string(),
        ],
    )?;
    let agent = agent_with_grains(&master, root.path(), "node1", "{roles: [web]}")?;
    master.wait_agent("node1", "accepted", true)?;
    let console = |args: &[&str]| master.console(args, None);

    // A highstate whose sources are salt:// files: a template and a recursed directory.
    let applied = console(&["apply", "*", "--json"])?;
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(
        std::fs::read_to_string(out.join("site.conf"))?,
        "id=node1 role=web port=8080 secret=s3\n"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("site.conf"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }
    assert_eq!(std::fs::read_to_string(out.join("tree/a.txt"))?, "alpha\n");
    assert_eq!(
        std::fs::read_to_string(out.join("tree/sub/b.txt"))?,
        "beta\n"
    );
    let again = returns(&console(&["apply", "*", "--json"])?)?;
    let changed: Vec<&Value> = again[0]["return"]
        .as_object()
        .map(|m| {
            m.values()
                .filter(|s| s["changes"] != serde_json::json!({}))
                .collect()
        })
        .unwrap_or_default();
    assert!(changed.is_empty(), "{again:?}");

    // cmd.script from a salt:// template.
    let script = console(&["apply", "*", "script"])?;
    assert!(script.status.success(), "{}", text(&script));
    assert_eq!(
        std::fs::read_to_string(out.join("script.out"))?,
        "hello node1\n"
    );

    // A state failing on the agent: Salt's summary names it with its comment, exit non-zero.
    let failing = console(&["apply", "*", "failing"])?;
    assert!(!failing.status.success(), "{}", text(&failing));
    let shown = String::from_utf8_lossy(&failing.stdout).into_owned();
    assert!(
        shown.contains("Failed:    1\n") && shown.contains("    - will_fail: "),
        "{shown}"
    );
    // The other execution functions: grains (custom ones included) and the agent's plan.
    let items = returns(&console(&["run", "*", "grains.items", "--json"])?)?;
    assert_eq!(
        items[0]["return"]["roles"],
        serde_json::json!(["web"]),
        "{items:?}"
    );
    assert_eq!(items[0]["return"]["id"], "node1", "{items:?}");
    let shown = returns(&console(&["run", "*", "state.show_sls", "site", "--json"])?)?;
    let ids: Vec<&str> = shown[0]["return"]["chunks"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["site_conf", "site_tree"], "{shown:?}");

    // Sources leaving file_root are refused, naming the state and the path.
    for (sls, source, leak) in [
        ("dots", "salt://../outside.txt", "leak1"),
        ("link", "salt://up/outside.txt", "leak2"),
    ] {
        let refused = console(&["apply", "*", sls, "--json"])?;
        assert!(!refused.status.success(), "{}", text(&refused));
        let ret = returns(&refused)?;
        let error = ret[0]["error"].as_str().unwrap_or_default();
        assert!(
            ret[0]["status"] == "failed" && error.contains(source) && error.contains("\"leak\""),
            "{ret:?}"
        );
        assert!(!out.join(leak).exists());
    }

    // A call past its --timeout is stopped on the agent, with what it started.
    let started = std::time::Instant::now();
    let slept = console(&[
        "run",
        "*",
        "cmd.run",
        "sleep 6007 & sleep 6007",
        "--timeout",
        "2s",
        "--json",
    ])?;
    assert!(!slept.status.success(), "{}", text(&slept));
    let ret = returns(&slept)?;
    assert_eq!(ret[0]["status"], "failed", "{ret:?}");
    assert!(
        ret[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout of 2s") && e.contains("stopped")),
        "{ret:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    wait_until("no `sleep 6007` left on the agent", || {
        Ok(processes_running(&["sleep", "6007"]).is_empty())
    })?;
    assert!(
        agent
            .proc
            .log_text()
            .contains("stopped a timed-out operator call"),
        "{}",
        agent.proc.log_text()
    );

    // Custom grains follow the config on SIGHUP; a core grain cannot be overridden.
    let config = write_agent_config(&master, root.path(), "node1", "{roles: [db]}")?;
    agent.proc.signal(libc::SIGHUP);
    wait_until("node1 targeted by its new role", || {
        let out = console(&["run", "-G", "roles:db", "test.ping", "--json"])?;
        Ok(out.status.success() && agents_of(&returns(&out)?).contains("node1"))
    })?;
    let web = console(&["run", "-G", "roles:web", "test.ping"])?;
    assert!(!web.status.success(), "{}", text(&web));
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)?.replace("grains: {roles: [db]}", "grains: {os: Plan9}"),
    )?;
    agent.proc.signal(libc::SIGHUP);
    wait_until("the agent to refuse a core grain", || {
        let log = agent.proc.log_text();
        Ok(log.contains("\"os\" is a core grain") && log.contains("node1.yaml"))
    })?;
    let os = console(&["run", "node1", "grains.get", "os", "--json"])?;
    assert_ne!(returns(&os)?[0]["return"], "Plan9", "{}", text(&os));
    let db = console(&["run", "-G", "roles:db", "test.ping"])?;
    assert!(db.status.success(), "{}", text(&db));
    Ok(())
}
