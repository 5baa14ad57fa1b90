//! `corpus-master pillar show`: the pillar last pushed for a project.

use corpus_proto::ProjectRequest;
use serde_json::{Value, json};

use super::{Console, print_json, rpc};

#[derive(clap::Subcommand, Debug)]
pub enum PillarCommand {
    /// The latest pillar pushed for a project.
    Show { env: String, project: String },
}

/// Pillar values are secrets: this prints them only to the operator who asked, on stdout.
pub async fn run(command: PillarCommand, console: &Console) -> anyhow::Result<()> {
    let PillarCommand::Show { env, project } = command;
    corpus_proto::names::validate_project_name(&project)?;
    let pillar = console
        .admin()
        .await?
        .show_pillar(ProjectRequest {
            env_uuid: env,
            project,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut files: Vec<_> = pillar.files.into_iter().collect();
    files.sort();
    if console.json {
        print_json(&json!({
            "job_id": pillar.job_id,
            "created_at": pillar.created_at_unix,
            "files": files
                .into_iter()
                .map(|(name, text)| (name, Value::String(text)))
                .collect::<serde_json::Map<_, _>>(),
        }));
        return Ok(());
    }
    println!(
        "# pushed with job {} at {}",
        pillar.job_id,
        corpus_runtime::format_unix_time(pillar.created_at_unix)
    );
    // The files are printed as they were pushed: they are the operator's own YAML.
    for (name, text) in files {
        println!("# --- {name}\n{text}");
    }
    Ok(())
}
