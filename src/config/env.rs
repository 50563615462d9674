//! `REFLEX_*` environment overrides applied to the configuration tree.
//!
//! A variable `REFLEX_<PATH>` names a key by its path in the TOML tree, upper-cased and joined
//! with `_`: `REFLEX_KAFKA_BROKERS`, `REFLEX_ROLES_ACTIONS_GROUP_ID`,
//! `REFLEX_ACTIONS_SHIP_ORDER_TOPIC`. Keys that themselves contain `_` are matched against the
//! keys that exist, so the split is never ambiguous in practice. Values are parsed like the key's
//! current type: integers, booleans, and comma-separated lists for arrays. A `REFLEX_*` variable
//! that names no key is returned to the caller, who warns about it (the prefix is shared with the
//! project's scripts and test harness, so it is not an error).

use toml::Value;

use super::ConfigError;

/// Variables read by the command line rather than the configuration tree.
const CLI_VARIABLES: &[&str] = &[
    "REFLEX_CONFIG",
    "REFLEX_INSTANCE_ID",
    "REFLEX_LOG",
    "REFLEX_LOG_FORMAT",
    "REFLEX_ROLE",
];

/// Applies every `REFLEX_*` variable in `vars` to `tree`; returns the names that match no key.
pub fn apply<I>(tree: &mut Value, vars: I) -> Result<Vec<String>, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut unknown = Vec::new();
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix("REFLEX_") else {
            continue;
        };
        if CLI_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let path = path.to_ascii_lowercase();
        let Some(slot) = find(tree, &path) else {
            unknown.push(name);
            continue;
        };
        *slot = parse_like(slot, &raw).map_err(|expected| ConfigError::BadEnv {
            name: name.clone(),
            value: raw.clone(),
            expected,
        })?;
    }
    Ok(unknown)
}

/// Finds the value whose `_`-joined path is `path`, preferring the longest matching key.
fn find<'a>(node: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let table = node.as_table_mut()?;
    let mut keys: Vec<String> = table
        .keys()
        .filter(|k| {
            let k = k.replace(['.', '-'], "_").to_ascii_lowercase();
            path == k || path.starts_with(&format!("{k}_"))
        })
        .cloned()
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        let norm = key.replace(['.', '-'], "_").to_ascii_lowercase();
        if path == norm {
            return table.get_mut(&key);
        }
        let rest = &path[norm.len() + 1..];
        // Re-borrow per candidate: only one candidate can succeed.
        if table.get(&key).and_then(|v| probe(v, rest)).is_some() {
            return table.get_mut(&key).and_then(|v| find(v, rest));
        }
    }
    None
}

/// Read-only twin of [`find`], used to pick the candidate that matches.
fn probe<'a>(node: &'a Value, path: &str) -> Option<&'a Value> {
    let table = node.as_table()?;
    for (key, value) in table {
        let norm = key.replace(['.', '-'], "_").to_ascii_lowercase();
        if path == norm {
            return Some(value);
        }
        if let Some(rest) = path.strip_prefix(&format!("{norm}_")) {
            if let Some(found) = probe(value, rest) {
                return Some(found);
            }
        }
    }
    None
}

/// Parses `raw` as a value of the same type as `current`.
fn parse_like(current: &Value, raw: &str) -> Result<Value, &'static str> {
    Ok(match current {
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| "an integer")?),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|_| "a number")?),
        Value::Boolean(_) => Value::Boolean(match raw.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err("true or false"),
        }),
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Value::Table(_) => return Err("a key inside this table, not the table itself"),
        _ => Value::String(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Value {
        toml::from_str(
            r#"
            [kafka]
            brokers = "a:1"
            [topics]
            events = ["x"]
            partitions = 3
            [roles.actions]
            group_id = "g"
            [actions.ship_order]
            topic = "t"
            "#,
        )
        .expect("test toml parses")
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn overrides_nested_keys_with_underscores() {
        let mut t = tree();
        apply(
            &mut t,
            vars(&[
                ("REFLEX_KAFKA_BROKERS", "b:2"),
                ("REFLEX_ROLES_ACTIONS_GROUP_ID", "g2"),
                ("REFLEX_ACTIONS_SHIP_ORDER_TOPIC", "t2"),
                ("REFLEX_TOPICS_EVENTS", "a, b"),
                ("REFLEX_TOPICS_PARTITIONS", "6"),
                ("REFLEX_CONFIG", "ignored"),
                ("HOME", "/root"),
            ]),
        )
        .expect("overrides apply");
        assert_eq!(t["kafka"]["brokers"].as_str(), Some("b:2"));
        assert_eq!(t["roles"]["actions"]["group_id"].as_str(), Some("g2"));
        assert_eq!(t["actions"]["ship_order"]["topic"].as_str(), Some("t2"));
        assert_eq!(t["topics"]["partitions"].as_integer(), Some(6));
        let events: Vec<_> = t["topics"]["events"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(events, ["a", "b"]);
    }

    #[test]
    fn unknown_variable_is_returned() {
        let mut t = tree();
        let unknown = apply(&mut t, vars(&[("REFLEX_KAFKA_BROKER", "x")])).expect("applies");
        assert_eq!(unknown, ["REFLEX_KAFKA_BROKER"]);
        assert_eq!(
            t["kafka"]["brokers"].as_str(),
            Some("a:1"),
            "nothing changed"
        );
    }

    #[test]
    fn bad_integer_names_value_and_type() {
        let mut t = tree();
        let err =
            apply(&mut t, vars(&[("REFLEX_TOPICS_PARTITIONS", "many")])).expect_err("bad int");
        let msg = err.to_string();
        assert!(msg.contains("many") && msg.contains("integer"), "{msg}");
    }
}
