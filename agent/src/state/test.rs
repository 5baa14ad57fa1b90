//! Salt's `test` state module (`nop`, `succeed_with_changes`, `fail_without_changes`, ...):
//! states that only return a chosen result, for trying requisites without touching the system.

use corpus_states::Chunk;
use serde_json::{Map, json};

use super::StateContext;
use super::result::Outcome;

fn some_changes() -> Map<String, serde_json::Value> {
    Map::from_iter([(
        "testing".to_string(),
        json!({"old": "Unchanged", "new": "Something pretended to change"}),
    )])
}

pub const FUNCTIONS: &[&str] = &[
    "nop",
    "succeed_without_changes",
    "succeed_with_changes",
    "fail_without_changes",
    "fail_with_changes",
];

/// Runs `test.<function>`; `None` for a function this module does not have.
pub fn call(chunk: &Chunk, ctx: &StateContext) -> Option<Outcome> {
    let outcome = match chunk.function.as_str() {
        "nop" => Outcome::ok("Success!"),
        "succeed_without_changes" => Outcome::ok("Success!"),
        "succeed_with_changes" if ctx.test => Outcome::would_change(
            "If we weren't testing, this would be successful with changes",
            some_changes(),
        ),
        "succeed_with_changes" => Outcome::changed("Success!", some_changes()),
        "fail_without_changes" => Outcome::fail("Failure!"),
        "fail_with_changes" => Outcome {
            result: Some(false),
            changes: some_changes(),
            comment: "Failure!".into(),
        },
        _ => return None,
    };
    Some(outcome)
}
