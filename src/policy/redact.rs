//! The `redact` obligation: removing fields from an event before a copy of it is written.
//!
//! A path names a field of the CloudEvent document, dot-separated: `data.customer_id`,
//! `data.items.*.sku` (`*` is every key of an object or every element of an array), `data.items.0`
//! (a number indexes an array). A path that matches nothing is not an error: the field may be
//! optional. Redaction removes the field, so a redacted row has the column empty rather than a
//! placeholder that looks like data.
//!
//! The actions role applies it to every copy of event data it writes (derived events); the audit
//! record never carries data. The lake role applies the same function to rows before they are
//! written.

use serde_json::Value;

use crate::event::CloudEvent;

/// Removes every field named by `paths` from `value`; returns how many fields were removed.
pub fn redact<S: AsRef<str>>(value: &mut Value, paths: &[S]) -> usize {
    paths
        .iter()
        .map(|path| {
            let segments: Vec<&str> = path.as_ref().split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return 0;
            }
            remove(value, &segments)
        })
        .sum()
}

/// A copy of `event` without the fields `paths` name. Paths are read against the CloudEvent
/// document, and only its `data` is ever removed from: `data.customer_id` and `*.customer_id`
/// remove that field, `data` (or `*`) removes all data, and envelope paths match nothing.
pub fn redacted<S: AsRef<str>>(event: &CloudEvent, paths: &[S]) -> CloudEvent {
    let mut copy = event.clone();
    redact_event(&mut copy, paths);
    copy
}

/// [`redacted`] in place, for a caller that owns the event and needs no unredacted copy.
pub fn redact_event<S: AsRef<str>>(event: &mut CloudEvent, paths: &[S]) {
    for path in paths {
        let path = path.as_ref();
        let (first, rest) = match path.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (path, None),
        };
        if first != "data" && first != "*" {
            continue;
        }
        match rest {
            None => event.data = None,
            Some(rest) => {
                if let Some(data) = event.data.as_mut() {
                    redact(data, &[rest]);
                }
            }
        }
    }
}

fn remove(value: &mut Value, segments: &[&str]) -> usize {
    let Some((first, rest)) = segments.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return match (value, *first) {
            (Value::Object(map), "*") => {
                let n = map.len();
                map.clear();
                n
            }
            (Value::Object(map), key) => usize::from(map.remove(key).is_some()),
            (Value::Array(items), "*") => {
                let n = items.len();
                items.clear();
                n
            }
            (Value::Array(items), index) => match index.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    // Keep positions stable for the other paths: null out rather than shift.
                    items[i] = Value::Null;
                    1
                }
                _ => 0,
            },
            _ => 0,
        };
    }
    match (value, *first) {
        (Value::Object(map), "*") => map.values_mut().map(|v| remove(v, rest)).sum(),
        (Value::Object(map), key) => map.get_mut(key).map_or(0, |v| remove(v, rest)),
        (Value::Array(items), "*") => items.iter_mut().map(|v| remove(v, rest)).sum(),
        (Value::Array(items), index) => index
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get_mut(i))
            .map_or(0, |v| remove(v, rest)),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"id": "e1", "type": "order.placed", "data": {
            "customer_id": "c-1", "amount": 5,
            "items": [{"sku": "A", "n": 1}, {"sku": "B", "n": 2}],
            "card": {"last4": "4242", "brand": "visa"}}})
    }

    #[test]
    fn removes_named_fields_and_keeps_the_rest() {
        let mut e = event();
        assert_eq!(redact(&mut e, &["data.customer_id", "data.card.last4"]), 2);
        assert_eq!(
            e["data"],
            json!({"amount": 5, "items": [{"sku": "A", "n": 1}, {"sku": "B", "n": 2}],
                   "card": {"brand": "visa"}})
        );
        assert_eq!(e["id"], "e1");
    }

    #[test]
    fn wildcards_and_indices() {
        let mut e = event();
        assert_eq!(redact(&mut e, &["data.items.*.sku"]), 2);
        assert_eq!(e["data"]["items"], json!([{"n": 1}, {"n": 2}]));
        let mut e = event();
        assert_eq!(redact(&mut e, &["data.items.1"]), 1);
        assert_eq!(e["data"]["items"], json!([{"sku": "A", "n": 1}, null]));
        let mut e = event();
        assert_eq!(redact(&mut e, &["data.card.*"]), 2);
        assert_eq!(e["data"]["card"], json!({}));
    }

    #[test]
    fn paths_that_match_nothing_change_nothing() {
        let mut e = event();
        let n = redact(
            &mut e,
            &[
                "data.missing",
                "data.amount.deeper",
                "data.items.9",
                "",
                "data..x",
                "nope.x",
            ],
        );
        assert_eq!(n, 0);
        assert_eq!(e, event());
    }
}
