//! Test support for the state modules: chunk builders, a recording fake service manager, file
//! sources over a temporary root with a small Jinja renderer.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use corpus_states::{Chunk, Requisite, RequisiteKind};
use serde_json::{Map, Value};

use super::{LocalFileSources, ServiceControl, StateContext};

pub fn chunk(module_fn: &str, id: &str, args: Value) -> Chunk {
    let (module, function) = module_fn.split_once('.').unwrap_or((module_fn, ""));
    let args: Map<String, Value> = args.as_object().cloned().unwrap_or_default();
    let name = args
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(id)
        .to_string();
    let mut args = args;
    args.remove("name");
    Chunk {
        id: id.to_string(),
        name,
        sls: "fixture".to_string(),
        module: module.to_string(),
        function: function.to_string(),
        args,
        requisites: Vec::new(),
    }
}

pub fn with_req(mut c: Chunk, kind: RequisiteKind, target: usize) -> Chunk {
    c.requisites.push(Requisite { kind, target });
    c
}

/// A service manager that remembers which units are active/enabled and what it was asked.
#[derive(Default)]
pub struct FakeServices {
    pub active: Mutex<BTreeSet<String>>,
    pub enabled: Mutex<BTreeSet<String>>,
    pub calls: Mutex<Vec<String>>,
    /// Units whose control verbs fail.
    pub broken: BTreeSet<String>,
    /// Units whose next control verb fails, once (a service that comes up on a second try).
    pub flaky: Mutex<BTreeSet<String>>,
    /// Pretend systemd is not running.
    pub unavailable: bool,
}

impl FakeServices {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ServiceControl for FakeServices {
    fn available(&self) -> Result<(), String> {
        if self.unavailable {
            Err("systemd is not running on this host".into())
        } else {
            Ok(())
        }
    }
    fn is_active(&self, name: &str) -> Result<bool, String> {
        Ok(self
            .active
            .lock()
            .map(|a| a.contains(name))
            .unwrap_or(false))
    }
    fn is_enabled(&self, name: &str) -> Result<bool, String> {
        Ok(self
            .enabled
            .lock()
            .map(|a| a.contains(name))
            .unwrap_or(false))
    }
    fn control(&self, verb: &str, name: &str) -> Result<(), String> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(format!("{verb} {name}"));
        }
        let flaked = self.flaky.lock().is_ok_and(|mut f| f.remove(name));
        if self.broken.contains(name) || flaked {
            return Err(format!("Job for {name}.service failed"));
        }
        let (Ok(mut active), Ok(mut enabled)) = (self.active.lock(), self.enabled.lock()) else {
            return Err("poisoned".into());
        };
        match verb {
            "start" | "restart" | "reload" => {
                active.insert(name.to_string());
            }
            "stop" => {
                active.remove(name);
            }
            "enable" => {
                enabled.insert(name.to_string());
            }
            "disable" => {
                enabled.remove(name);
            }
            _ => return Err(format!("unknown verb {verb}")),
        }
        Ok(())
    }
}

/// File sources under `root`, rendering Jinja with `pillar` and the state's extra context.
pub fn sources(root: &Path, pillar: Value) -> LocalFileSources {
    LocalFileSources::new(
        Some(root.to_path_buf()),
        Some(Box::new(move |name, text, extra| {
            let mut env = minijinja::Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
            {
                env.set_syntax(syntax);
            }
            let mut ctx = extra.clone();
            ctx.insert("pillar".into(), pillar.clone());
            env.render_str(text, minijinja::Value::from(minijinja::value::Serde(&ctx)))
                .map_err(|e| format!("cannot render {name}: {e}"))
        })),
    )
}

pub fn ctx<'a>(
    test: bool,
    sources: &'a LocalFileSources,
    services: &'a FakeServices,
) -> StateContext<'a> {
    StateContext {
        test,
        sources,
        services,
        accumulators: Default::default(),
    }
}
