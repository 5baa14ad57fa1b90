//! `corpus-master render`: Salt's state.show_sls for one agent, from the master's own state and
//! pillar trees, with that agent's grains.

use corpus_tests::{Agent, Master};

#[test]
fn render_prints_the_ordered_plan_for_an_agent_without_running_it() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let states = root.path().join("states");
    let pillar = root.path().join("pillar");
    std::fs::create_dir_all(&states)?;
    std::fs::create_dir_all(&pillar)?;
    let target = root.path().join("never-written.conf");
    std::fs::write(states.join("top.sls"), "base:\n  'node*':\n    - web\n")?;
    std::fs::write(
        states.join("web.sls"),
        format!(
            "nginx:\n  service.running:\n    - watch:\n      - file: conf\nconf:\n  file.managed:\n    - name: {}\n    - contents: \"port {{{{ pillar['port'] }}}} on {{{{ grains['id'] }}}}\"\n",
            target.display()
        ),
    )?;
    std::fs::write(pillar.join("top.sls"), "base:\n  '*':\n    - common\n")?;
    std::fs::write(pillar.join("common.sls"), "port: 8080\n")?;

    let states_arg = states.display().to_string();
    let pillar_arg = pillar.display().to_string();
    let master = Master::start_with(
        root.path(),
        &["--file-root", &states_arg, "--pillar-root", &pillar_arg],
    )?;
    let token = master.token("10m")?;
    let _agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;

    let plan = master.console_json(&["render", "--agent", "node1"])?;
    let chunks = plan["chunks"].as_array().cloned().unwrap_or_default();
    let ids: Vec<_> = chunks
        .iter()
        .map(|c| c["id"].as_str().unwrap_or(""))
        .collect();
    // The watched file comes before the service that watches it.
    assert_eq!(ids, ["conf", "nginx"]);
    assert_eq!(chunks[0]["args"]["contents"], "port 8080 on node1");
    assert!(!target.exists(), "render must not apply anything");

    let out = master.console(&["render", "--agent", "node1"], None)?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.contains("__run_num__: 1") && text.contains("- watch:"),
        "{text}"
    );

    let out = master.console(&["render", "--agent", "node1", "missing"], None)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    Ok(())
}

#[test]
fn sighup_reloads_the_settings_and_keeps_them_when_the_new_file_is_invalid() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    for (tree, id) in [("a", "from_a"), ("b", "from_b")] {
        let dir = root.path().join(tree);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("web.sls"), format!("{id}:\n  test.nop: []\n"))?;
    }
    let config = root.path().join("master.yaml");
    std::fs::write(
        &config,
        format!("file_root: {}\n", root.path().join("a").display()),
    )?;
    let config_arg = config.display().to_string();
    let master = Master::start_with(root.path(), &["--config", &config_arg])?;
    let token = master.token("10m")?;
    let _agent = Agent::start(&master, root.path(), "node1", Some(&token))?;
    master.wait_agent("node1", "accepted", true)?;
    let first_id = |master: &Master| -> anyhow::Result<String> {
        let plan = master.console_json(&["render", "--agent", "node1", "web"])?;
        Ok(plan["chunks"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    assert_eq!(first_id(&master)?, "from_a");

    std::fs::write(
        &config,
        format!("file_root: {}\n", root.path().join("b").display()),
    )?;
    master.proc.signal(libc::SIGHUP);
    corpus_tests::wait_until("the master to reload its settings", || {
        Ok(first_id(&master)? == "from_b")
    })?;

    std::fs::write(&config, "file_root: [broken\n")?;
    master.proc.signal(libc::SIGHUP);
    corpus_tests::wait_until("the master to refuse the broken file", || {
        Ok(master
            .proc
            .log_text()
            .contains("keeping the previous settings"))
    })?;
    assert_eq!(first_id(&master)?, "from_b");
    assert!(master.proc.child.id() > 0 && master.agent("node1")?.is_some());
    Ok(())
}
