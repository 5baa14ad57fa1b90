//! A render stops soon after its cancel flag is set (`limits::cancellable`): the master sets it
//! when the client of a push goes away, so a long template does not keep a core busy for a
//! client that left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corpus_pillar::template::limits::cancellable;
use corpus_pillar::{MemoryTree, TemplateContext, TemplateEngine};
use serde_json::json;

/// About 100,000 allocations of 4 MB each: tens of seconds of CPU on any machine, little fuel.
const LONG_TEMPLATE: &str =
    "{% for i in range(100000) %}{% set s = 'x' * 4000000 %}{{ s|length }}{% endfor %}\n";

fn engine() -> (TemplateEngine, TemplateContext) {
    let engine = TemplateEngine::new(Arc::new(MemoryTree::new()));
    let ctx = TemplateContext::new(json!({}), json!({}), json!({}), json!("base"));
    (engine, ctx)
}

#[test]
fn a_cancelled_render_stops_with_a_message_saying_so() {
    let (engine, ctx) = engine();
    let flag = Arc::new(AtomicBool::new(false));
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::Relaxed);
            Instant::now()
        })
    };
    let result = cancellable(flag, || engine.render("build.sls", LONG_TEMPLATE, &ctx));
    let ended = Instant::now();
    let set_at = setter.join().expect("the setter thread");
    let err = result
        .expect_err("the long render was not cancelled")
        .to_string();
    assert!(err.contains("cancelled"), "{err}");
    // Reported, not asserted: how soon after the flag the render stopped.
    eprintln!(
        "render stopped {} ms after its cancel flag was set",
        ended.saturating_duration_since(set_at).as_millis()
    );
}

#[test]
fn a_render_outside_cancellable_or_with_the_flag_clear_is_unchanged() {
    let (engine, ctx) = engine();
    let short = "{% for i in range(3) %}{{ i ~ 'x' }}{% endfor %}\n";
    let plain = engine.render("a.sls", short, &ctx).expect("a plain render");
    let flag = Arc::new(AtomicBool::new(false));
    let hooked = cancellable(flag.clone(), || engine.render("a.sls", short, &ctx))
        .expect("a render with the flag clear");
    assert_eq!(plain, hooked);
    assert_eq!(plain, "0x1x2x\n");
    // The flag only reaches renders inside `cancellable`: after it, a set flag changes nothing.
    flag.store(true, Ordering::Relaxed);
    assert_eq!(
        engine.render("a.sls", short, &ctx).expect("a later render"),
        plain
    );
}
