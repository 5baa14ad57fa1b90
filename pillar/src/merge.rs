//! Deep merge of pillar data, and the project defaults chain the master applies.

use serde_json::Value;

/// Merges `overlay` into `base`: maps merge recursively, any other value in `overlay` replaces
/// the one in `base` (lists are replaced, not appended, as in Salt's default `smart` strategy).
pub fn deep_merge(base: Value, overlay: Value) -> Value {
    match (base, overlay) {
        (Value::Object(mut base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                let merged = match base.remove(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (_, overlay) => overlay,
    }
}

/// In-place form of [`deep_merge`].
pub fn deep_merge_into(base: &mut Value, overlay: Value) {
    let taken = std::mem::take(base);
    *base = deep_merge(taken, overlay);
}

/// The project defaults chain: `.salt/PILLAR.sample` <- environment defaults <- pillar. Each layer
/// deep-merges over the previous one, so the agent's own pillar wins. A `null` layer (a missing
/// file) is skipped rather than erasing what came before.
pub fn defaults_chain(sample: Value, env_defaults: Value, pillar: Value) -> Value {
    let mut merged = Value::Object(Default::default());
    for layer in [sample, env_defaults, pillar] {
        if !layer.is_null() {
            deep_merge_into(&mut merged, layer);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_cases() {
        let cases = [
            // maps merge recursively, later wins on scalars
            (
                json!({"a": {"x": 1, "y": 2}, "b": 1}),
                json!({"a": {"y": 3, "z": 4}}),
                json!({"a": {"x": 1, "y": 3, "z": 4}, "b": 1}),
            ),
            // lists are replaced
            (json!({"l": [1, 2]}), json!({"l": [3]}), json!({"l": [3]})),
            // a scalar replaces a map and a map replaces a scalar
            (json!({"a": {"x": 1}}), json!({"a": 5}), json!({"a": 5})),
            (
                json!({"a": 5}),
                json!({"a": {"x": 1}}),
                json!({"a": {"x": 1}}),
            ),
            // null in the overlay replaces too (explicit null is a value)
            (json!({"a": 1}), json!({"a": null}), json!({"a": null})),
            // non-map roots: overlay wins
            (json!([1]), json!({"a": 1}), json!({"a": 1})),
        ];
        for (base, overlay, expected) in cases {
            assert_eq!(
                deep_merge(base.clone(), overlay.clone()),
                expected,
                "{base} <- {overlay}"
            );
        }
    }

    #[test]
    fn defaults_chain_pillar_wins_over_env_over_sample() {
        let sample = json!({"db": {"host": "localhost", "port": 5432}, "debug": false});
        let env = json!({"db": {"host": "db.staging"}, "debug": true});
        let pillar = json!({"db": {"port": 6432}});
        assert_eq!(
            defaults_chain(sample, env, pillar),
            json!({"db": {"host": "db.staging", "port": 6432}, "debug": true})
        );
        assert_eq!(
            defaults_chain(Value::Null, json!({"a": 1}), Value::Null),
            json!({"a": 1})
        );
    }
}
