//! The operator console: every `corpus-master` subcommand but `init` and `serve`. Each talks to
//! the running master over its admin socket (`DATA_DIR/admin.sock`) and prints text or, with
//! `--json`, JSON. This is the binary's edge, so errors are `anyhow` with the master's message.
//!
//! One file per command group; this one holds what they share: the connection, the mapping of
//! the master's refusals, JSON printing and aligned tables.

pub mod agents;
pub mod envs;
pub mod fleet;
pub mod jobs;
pub mod nodes;
pub mod pillar;
pub mod render;
pub mod sessions;
pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};

use comfy_table::{CellAlignment, presets};
use corpus_proto::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::admin::socket_path;

/// The master's data dir, shared by `init`, `serve` and the console.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDirArg {
    /// The master's data dir (CA, database, admin socket).
    #[arg(
        long,
        global = true,
        env = "CORPUS_MASTER_DATA_DIR",
        default_value = "/var/lib/corpus-master"
    )]
    pub data_dir: PathBuf,
}

/// What every console command is given: which master, and how to print.
#[derive(clap::Args, Clone, Debug)]
pub struct Console {
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Console {
    /// A connection to the running master's Admin service.
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        connect(&self.dir.data_dir).await
    }
}

/// Connects to a running master's admin socket in `data_dir`.
pub async fn connect(data_dir: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let path = socket_path(data_dir);
    if !path.exists() {
        anyhow::bail!(
            "no master is running with data dir {} (no {}): start one with `corpus-master serve --data-dir {}`",
            data_dir.display(),
            path.display(),
            data_dir.display()
        );
    }
    let socket = path.clone();
    // The URI is a placeholder: the connector below always dials the unix socket.
    let channel = Endpoint::from_static("http://admin.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the master's admin socket {}: {e} (is `corpus-master serve` running?)",
                path.display()
            )
        })?;
    // As large as the CLI's: a listing of 19,000 agents is about 5 MB, beyond tonic's 4 MiB.
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(corpus_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(corpus_proto::MAX_MESSAGE_BYTES))
}

/// A refusal from the master, as the operator should read it: its message already names the
/// thing and what to do; the gRPC code adds nothing for a human.
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Makes text safe to print on a terminal: control characters (an escape sequence in an
/// agent id or a job comment) are shown escaped instead of being interpreted.
pub fn printable(text: &str) -> String {
    corpus_proto::names::printable(text)
}

/// A borderless text table whose columns are as wide as their widest cell, two spaces apart.
pub struct Table {
    table: comfy_table::Table,
    /// Columns right-aligned at render time (comfy-table makes columns as rows arrive).
    right_aligned: Vec<usize>,
}

impl Table {
    /// A table with these column headers (none: no header line).
    pub fn new(header: &[&str]) -> Table {
        let mut table = comfy_table::Table::new();
        table.load_preset(presets::NOTHING);
        if !header.is_empty() {
            table.set_header(header.to_vec());
        }
        Table {
            table,
            right_aligned: Vec::new(),
        }
    }

    /// Right-aligns the columns at `columns` (numbers).
    pub fn right_align(mut self, columns: &[usize]) -> Table {
        self.right_aligned.extend_from_slice(columns);
        self
    }

    /// Adds a row; cells are made [`printable`].
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(|c| printable(c.as_ref())).collect();
        self.table.add_row(cells);
    }

    /// The table as text, each line starting with `indent` and without trailing spaces.
    pub fn render(&mut self, indent: &str) -> String {
        let last = self.table.column_count().saturating_sub(1);
        for (index, column) in self.table.column_iter_mut().enumerate() {
            column.set_padding((0, if index == last { 0 } else { 2 }));
            if self.right_aligned.contains(&index) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut out = String::new();
        for line in self.table.lines() {
            out.push_str(indent);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(mut self) {
        print!("{}", self.render(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_whatever_the_id_length() {
        let mut table = Table::new(&["ID", "STATUS", "ADDRESS"]);
        table.row(["a", "accepted", "10.0.0.1"]);
        table.row([
            "a-much-longer-agent-id-than-thirty-characters",
            "pending",
            "",
        ]);
        let text = table.render("");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let status_at: Vec<_> = lines
            .iter()
            .map(|l| {
                l.find("STATUS")
                    .or_else(|| l.find("accepted"))
                    .or_else(|| l.find("pending"))
            })
            .collect();
        assert!(
            status_at
                .iter()
                .all(|&at| at == status_at[0] && at.is_some()),
            "{text}"
        );
        assert_eq!(
            status_at[0],
            Some("a-much-longer-agent-id-than-thirty-characters  ".len())
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
    }

    #[test]
    fn control_characters_in_cells_are_escaped() {
        assert_eq!(printable("node\u{1b}[2Jx"), "node\\u{1b}[2Jx");
        let mut table = Table::new(&[]).right_align(&[0]);
        table.row(["7", "ok"]);
        table.row(["12", "line\nbreak"]);
        assert_eq!(table.render("  "), "   7  ok\n  12  line\\nbreak\n");
    }
}
