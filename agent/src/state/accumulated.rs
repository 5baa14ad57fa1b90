//! Salt's `file.accumulated`: text collected during a run under a file name and an accumulator
//! name, which the file's `file.managed` template sees as `accumulator[name]` (a list of
//! lines) and `file.blockreplace` appends to its block. Lives for one run of the executor.

use std::collections::BTreeMap;
use std::sync::Mutex;

use corpus_states::Chunk;
use serde_json::{Map, Value};

use super::StateContext;
use super::args::Args;
use super::result::Outcome;

/// Accumulated text per target file, then per accumulator name, in the order added.
#[derive(Debug, Default)]
pub struct Accumulators(Mutex<BTreeMap<String, BTreeMap<String, Vec<String>>>>);

impl Accumulators {
    fn add(&self, filename: &str, name: &str, lines: Vec<String>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all
            .entry(filename.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default();
        for line in lines {
            if !entry.contains(&line) {
                entry.push(line);
            }
        }
    }

    /// What was accumulated for `filename`, as the template's `accumulator` value.
    pub fn for_file(&self, filename: &str) -> Option<Map<String, Value>> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(filename).map(|by_name| {
            by_name
                .iter()
                .map(|(name, lines)| (name.clone(), Value::from(lines.clone())))
                .collect()
        })
    }
}

/// `file.accumulated`: adds `text` (a string or a list) to accumulator `name` for `filename`.
pub fn accumulated(chunk: &Chunk, ctx: &StateContext) -> Result<Outcome, String> {
    let args = Args(&chunk.args);
    let filename = args
        .string("filename")?
        .ok_or("file.accumulated needs `filename`, the file the text is for")?;
    let lines = args.string_list("text")?;
    if lines.is_empty() {
        return Err("file.accumulated needs `text`".to_string());
    }
    ctx.accumulators.add(&filename, &chunk.name, lines);
    Ok(Outcome::ok(format!(
        "Accumulator {} for file {filename} was charged by text",
        chunk.name
    )))
}

#[cfg(test)]
mod tests {
    use corpus_states::{Plan, RequisiteKind};
    use serde_json::json;

    use crate::state::Executor;
    use crate::state::testing::{FakeServices, chunk, sources, with_req};

    #[test]
    fn accumulated_text_reaches_the_managed_template_and_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("app.conf").display().to_string();
        let block = dir.path().join("block.conf").display().to_string();
        std::fs::write(&block, "# start\n# end\n").unwrap();
        std::fs::write(
            dir.path().join("app.conf.j2"),
            "{% for line in accumulator['extra'] %}{{ line }}\n{% endfor %}",
        )
        .unwrap();
        let src = sources(dir.path(), json!({}));
        let plan = Plan {
            chunks: vec![
                chunk(
                    "file.accumulated",
                    "extra",
                    json!({"filename": conf, "text": ["a=1", "b=2"]}),
                ),
                chunk(
                    "file.accumulated",
                    "more",
                    json!({"name": "extra", "filename": conf, "text": "c=3"}),
                ),
                chunk(
                    "file.accumulated",
                    "blk",
                    json!({"filename": block, "text": "inside"}),
                ),
                with_req(
                    with_req(
                        chunk(
                            "file.managed",
                            "conf",
                            json!({"name": conf, "source": "salt://app.conf.j2", "template": "jinja"}),
                        ),
                        RequisiteKind::Require,
                        0,
                    ),
                    RequisiteKind::Require,
                    1,
                ),
                with_req(
                    chunk(
                        "file.blockreplace",
                        "b",
                        json!({"name": block, "marker_start": "# start", "marker_end": "# end"}),
                    ),
                    RequisiteKind::Require,
                    2,
                ),
            ],
        };
        let report = Executor {
            test: false,
            sources: &src,
            services: &FakeServices::default(),
        }
        .run(&plan);
        for r in &report.results {
            assert_ne!(
                r.result.result,
                Some(false),
                "{}: {}",
                r.key,
                r.result.comment
            );
        }
        assert_eq!(
            report.results[0].result.comment,
            format!("Accumulator extra for file {conf} was charged by text")
        );
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "a=1\nb=2\nc=3\n");
        assert_eq!(
            std::fs::read_to_string(&block).unwrap(),
            "# start\ninside\n# end\n"
        );
    }
}
