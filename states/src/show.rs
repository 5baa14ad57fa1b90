//! Printing a plan the way Salt's `state.show_sls` does: one YAML entry per state id, in plan
//! order, with the module's argument list, the function, `__sls__` and `__run_num__`.

use serde_yaml::{Mapping, Value as Yaml};

use crate::plan::{Plan, RequisiteKind};
use crate::requisites::kind_name;

fn yaml(value: &serde_json::Value) -> Yaml {
    serde_yaml::to_value(value).unwrap_or(Yaml::Null)
}

/// The plan as Salt's `state.show_sls` YAML.
pub fn show_sls(plan: &Plan) -> String {
    let mut doc = Mapping::new();
    for (run_num, chunk) in plan.chunks.iter().enumerate() {
        let mut args: Vec<Yaml> = Vec::new();
        let mut name = Mapping::new();
        name.insert("name".into(), chunk.name.clone().into());
        args.push(Yaml::Mapping(name));
        for (key, value) in &chunk.args {
            let mut arg = Mapping::new();
            arg.insert(key.clone().into(), yaml(value));
            args.push(Yaml::Mapping(arg));
        }
        for kind in [
            RequisiteKind::Require,
            RequisiteKind::Watch,
            RequisiteKind::Onchanges,
            RequisiteKind::Onfail,
            RequisiteKind::RequireAny,
            RequisiteKind::WatchAny,
            RequisiteKind::OnchangesAny,
            RequisiteKind::OnfailAny,
            RequisiteKind::Listen,
            RequisiteKind::Prereq,
        ] {
            let targets: Vec<Yaml> = chunk
                .requisites
                .iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| plan.chunks.get(r.target))
                .map(|t| {
                    let mut target = Mapping::new();
                    target.insert(t.module.clone().into(), t.id.clone().into());
                    Yaml::Mapping(target)
                })
                .collect();
            if !targets.is_empty() {
                let mut req = Mapping::new();
                req.insert(kind_name(kind).into(), Yaml::Sequence(targets));
                args.push(Yaml::Mapping(req));
            }
        }
        args.push(chunk.function.clone().into());
        let entry = doc
            .entry(chunk.id.clone().into())
            .or_insert_with(|| Yaml::Mapping(Mapping::new()));
        if let Yaml::Mapping(entry) = entry {
            entry.insert("__sls__".into(), chunk.sls.clone().into());
            entry.insert("__run_num__".into(), (run_num as u64).into());
            entry.insert(chunk.module.clone().into(), Yaml::Sequence(args));
        }
    }
    serde_yaml::to_string(&Yaml::Mapping(doc)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Chunk, Requisite};
    use serde_json::json;

    #[test]
    fn shows_states_in_plan_order_with_requisites_and_run_numbers() {
        let chunk = |id: &str, module: &str, function: &str| Chunk {
            id: id.into(),
            name: format!("/srv/{id}"),
            sls: "web".into(),
            module: module.into(),
            function: function.into(),
            args: json!({"mode": "0644"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            requisites: vec![],
        };
        let mut svc = chunk("nginx", "service", "running");
        svc.requisites.push(Requisite {
            kind: RequisiteKind::Watch,
            target: 0,
        });
        let plan = Plan {
            chunks: vec![chunk("conf", "file", "managed"), svc],
        };
        let text = show_sls(&plan);
        let conf = text.find("conf:").unwrap_or(usize::MAX);
        let nginx = text.find("nginx:").unwrap_or(0);
        assert!(conf < nginx, "{text}");
        assert!(text.contains("__run_num__: 1"), "{text}");
        assert!(text.contains("- watch:\n    - file: conf"), "{text}");
        assert!(text.contains("- managed"), "{text}");
    }
}
