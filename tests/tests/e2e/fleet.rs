//! Operator runs (`corpus-master apply|run`) on three real agents: targeting, the highstate from
//! the master's file_root, per-agent pillar, batches, `--async` and `jobs show`, render errors
//! and a stopped agent. Every state writes only under the test's temp dir.

use std::collections::BTreeSet;
use std::path::Path;
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

fn write_trees(root: &Path, out: &Path) -> anyhow::Result<()> {
    let states = root.join("states");
    let pillar = root.join("pillar");
    std::fs::create_dir_all(&states)?;
    std::fs::create_dir_all(&pillar)?;
    let out = out.display();
    // Two agents by grain (their id), the third by name.
    std::fs::write(
        states.join("top.sls"),
        "base:\n  'id:web*':\n    - match: grain\n    - web\n  'db1':\n    - db\n",
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
    let master = Master::start_with(
        root.path(),
        &["--file-root", &states, "--pillar-root", &pillar],
    )?;
    let mut agents = Vec::new();
    for id in ["web1", "web2", "db1"] {
        let token = master.token("10m")?;
        agents.push(Agent::start(&master, root.path(), id, Some(&token))?);
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
                        .is_some_and(|e| e.contains("broken.sls")),
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
