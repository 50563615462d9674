use super::*;
use crate::analytics::spec::parse_file;
use std::path::Path;

fn analyses(text: &str) -> Arc<[Analysis]> {
    parse_file(Path::new("t.toml"), text).expect("valid").into()
}

fn ev(id: &str, ty: &str, minute: i64, data: Value) -> (CloudEvent, i64) {
    let event = serde_json::from_value(json!({
        "specversion": "1.0", "id": id, "source": "/s", "type": ty, "data": data
    }))
    .expect("event");
    (event, minute * 60_000)
}

fn feed(engine: &mut Engine, events: &[(CloudEvent, i64)], topic: &str) -> (Vec<Finding>, u32) {
    let mut out = Vec::new();
    let mut late = 0;
    for (offset, (event, time_ms)) in events.iter().enumerate() {
        let o = engine.observe(
            Observation {
                event: event.into(),
                time_ms: *time_ms,
                topic,
                offset: offset as i64,
            },
            &mut out,
        );
        late += o.late;
    }
    (out, late)
}

const REFUNDS: &str = r#"
[refunds]
types = ["refund"]
group_by = ["data.order"]
window = { tumbling = "1h" }
allowed_lateness = "10m"
aggregates = { n = "count", total = "sum(data.amount)" }
condition = "n >= 2"
emit = "refunds.high"
"#;

#[test]
fn the_slowest_input_holds_the_watermark_until_it_catches_up_or_is_idle() {
    let mut engine = Engine::new(analyses(REFUNDS), 100);
    engine.track("u");
    let mut out = Vec::new();
    let events = [
        ev("a", "refund", 1, json!({"order": "o1", "amount": 10})),
        ev("b", "refund", 5, json!({"order": "o1", "amount": 5})),
        ev("c", "refund", 75, json!({"order": "o3", "amount": 1})),
    ];
    for (offset, (event, time_ms)) in events.iter().enumerate() {
        let obs = Observation {
            event: event.into(),
            time_ms: *time_ms,
            topic: "t",
            offset: offset as i64,
        };
        engine.observe(obs, &mut out);
    }
    assert!(out.is_empty(), "input u has no event yet: {out:?}");
    let (other, t) = ev("d", "other", 62, json!({}));
    engine.observe(
        Observation {
            event: (&other).into(),
            time_ms: t,
            topic: "u",
            offset: 0,
        },
        &mut out,
    );
    assert!(
        out.is_empty(),
        "u is at 62 min, the watermark at 52: {out:?}"
    );
    engine.set_idle("u", true, &mut out);
    assert_eq!(out.len(), 1, "u idle: t alone (75 - 10) closes [0, 60)");
    assert_eq!(out[0].key, "o1");
}

#[test]
fn windows_close_on_the_watermark_and_ids_are_deterministic() {
    let run = || {
        let mut engine = Engine::new(analyses(REFUNDS), 100);
        let events = vec![
            ev("a", "refund", 1, json!({"order": "o1", "amount": 10})),
            ev("b", "refund", 5, json!({"order": "o1", "amount": 5})),
            ev("c", "refund", 7, json!({"order": "o2", "amount": 1})),
            ev("d", "refund", 70, json!({"order": "o3", "amount": 1})),
        ];
        feed(&mut engine, &events, "t").0
    };
    let out = run();
    assert_eq!(out.len(), 1, "{out:?}");
    let f = &out[0];
    assert_eq!(f.key, "o1");
    assert_eq!(f.event.ty, "refunds.high");
    assert_eq!(f.event.extensions["causationid"], json!("a"));
    let data = f.event.data.as_ref().expect("data");
    assert_eq!(data["values"], json!({"n": 2.0, "total": 15.0}));
    assert_eq!(data["window"]["start"], json!("1970-01-01T00:00:00.000Z"));
    assert_eq!(data["group"], json!({"data.order": "o1"}));
    assert_eq!(f.event.id, finding_id("refunds", 0, 3_600_000, "o1"));
    assert_eq!(run(), out, "the same input gives the same findings and ids");
}

#[test]
fn late_events_inside_the_lateness_count_and_beyond_it_are_reported() {
    let mut engine = Engine::new(analyses(REFUNDS), 100);
    let events = vec![
        ev("a", "refund", 1, json!({"order": "o1"})),
        ev("b", "refund", 65, json!({"order": "o9"})),
        // 3 min is behind the newest (65) but its window [0,60) closes at watermark 60: in time.
        ev("c", "refund", 3, json!({"order": "o1"})),
        ev("d", "refund", 71, json!({"order": "o9"})),
        // The watermark is now 61: [0,60) closed, so this one is late.
        ev("e", "refund", 4, json!({"order": "o1"})),
    ];
    let (out, late) = feed(&mut engine, &events, "t");
    assert_eq!(late, 1);
    assert_eq!(engine.state(0).late, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].event.data.as_ref().expect("data")["values"]["n"],
        json!(2.0)
    );
}

#[test]
fn hopping_windows_count_an_event_in_each_window_holding_it() {
    let a = analyses(
        "[h]\ntypes = [\"x\"]\nwindow = { hopping = \"30m\", advance = \"10m\" }\ncondition = \"count >= 1\"\nemit = \"h\"\n",
    );
    let mut engine = Engine::new(a, 100);
    let (mut out, _) = feed(&mut engine, &[ev("a", "x", 25, json!({}))], "t");
    engine.flush(&mut out);
    let starts: Vec<String> = out
        .iter()
        .map(|f| {
            f.event.data.as_ref().expect("data")["window"]["start"]
                .as_str()
                .expect("start")
                .to_owned()
        })
        .collect();
    assert_eq!(
        starts,
        [
            "1970-01-01T00:00:00.000Z",
            "1970-01-01T00:10:00.000Z",
            "1970-01-01T00:20:00.000Z"
        ]
    );
}

#[test]
fn session_windows_merge_when_an_event_bridges_them() {
    let a = analyses(
        "[s]\ntypes = [\"x\"]\ngroup_by = [\"data.user\"]\nwindow = { session = \"10m\" }\nallowed_lateness = \"1h\"\naggregates = { n = \"count\", top = \"max(data.v)\" }\ncondition = \"n >= 1\"\nemit = \"s\"\n",
    );
    let mut engine = Engine::new(a, 100);
    let events = vec![
        ev("a", "x", 0, json!({"user": "u", "v": 1})),
        ev("b", "x", 15, json!({"user": "u", "v": 2})),
        // 8 min bridges [0,10) and [15,25).
        ev("c", "x", 8, json!({"user": "u", "v": 7})),
        ev("d", "x", 40, json!({"user": "u", "v": 1})),
    ];
    let (mut out, _) = feed(&mut engine, &events, "t");
    engine.flush(&mut out);
    let got: Vec<(Value, Value)> = out
        .iter()
        .map(|f| {
            let d = f.event.data.as_ref().expect("data");
            (d["window"]["start"].clone(), d["values"].clone())
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                json!("1970-01-01T00:00:00.000Z"),
                json!({"n": 3.0, "top": 7.0})
            ),
            (
                json!("1970-01-01T00:40:00.000Z"),
                json!({"n": 1.0, "top": 1.0})
            ),
        ]
    );
}

#[test]
fn absence_fires_for_the_first_event_without_a_follow_up_in_time() {
    let a = analyses(
        "[unsettled]\nabsence = { first = \"auth\", then = \"settle\", correlate = \"data.p\", within = \"30m\" }\nemit = \"unsettled\"\n",
    );
    let mut engine = Engine::new(a, 100);
    let events = vec![
        ev("a1", "auth", 0, json!({"p": "p1"})),
        ev("a2", "auth", 1, json!({"p": "p2"})),
        ev("a3", "auth", 2, json!({"p": "p3"})),
        ev("s1", "settle", 10, json!({"p": "p1"})),
        // p2 settles too late (after 31 min).
        ev("s2", "settle", 40, json!({"p": "p2"})),
        ev("z", "other", 100, json!({})),
    ];
    let (out, _) = feed(&mut engine, &events, "t");
    let mut got: Vec<(String, String)> = out
        .iter()
        .map(|f| (f.key.clone(), f.event.extensions["causationid"].to_string()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("p2".to_owned(), "\"a2\"".to_owned()),
            ("p3".to_owned(), "\"a3\"".to_owned())
        ]
    );
    assert_eq!(
        engine.state(0).groups(),
        0,
        "fired and settled pairs are forgotten"
    );
}

#[test]
fn an_anomaly_fires_when_a_period_falls_far_below_the_baseline_even_when_silent() {
    let a = analyses(
        "[rate]\ntypes = [\"order\"]\nwindow = { tumbling = \"1m\" }\naggregates = { orders = \"count\" }\nanomaly = { metric = \"orders\", warmup = 5, threshold = 3.0, direction = \"below\" }\nemit = \"rate.low\"\n",
    );
    let mut engine = Engine::new(a, 100);
    let mut events = Vec::new();
    let mut n = 0;
    for minute in 0..10 {
        let per = if minute % 2 == 0 { 10 } else { 12 };
        for _ in 0..per {
            n += 1;
            events.push(ev(&format!("o{n}"), "order", minute, json!({})));
        }
    }
    // Minutes 10 and 11 are silent; minute 12 has an order, which moves the watermark past 12.
    events.push(ev("late-one", "order", 12, json!({})));
    events.push(ev("tick", "order", 13, json!({})));
    let (out, _) = feed(&mut engine, &events, "t");
    assert_eq!(out.len(), 1, "{out:?}");
    let data = out[0].event.data.as_ref().expect("data");
    assert_eq!(data["window"]["start"], json!("1970-01-01T00:10:00.000Z"));
    assert_eq!(data["anomaly"]["value"], json!(0.0));
    assert!(data["anomaly"]["z"].as_f64().expect("z") <= -3.0);
}

#[test]
fn the_group_bound_evicts_the_least_recently_used_and_counts_it() {
    let mut engine = Engine::new(analyses(REFUNDS), 2);
    let events = vec![
        ev("a", "refund", 1, json!({"order": "o1"})),
        ev("b", "refund", 2, json!({"order": "o2"})),
        ev("c", "refund", 3, json!({"order": "o1"})),
        ev("d", "refund", 4, json!({"order": "o3"})),
    ];
    feed(&mut engine, &events, "t");
    assert_eq!(engine.state(0).groups(), 2);
    assert_eq!(engine.state(0).evicted, 1);
    let mut held: Vec<&str> = engine.state(0).groups.keys().map(|k| &**k).collect();
    held.sort_unstable();
    assert_eq!(held, ["o1", "o3"], "o2 was used least recently");
}

#[test]
fn timers_of_evicted_groups_are_dropped_and_never_close_a_later_window() {
    // Five thousand orders in one hour, each its own group, over a bound of ten groups: the
    // timers of evicted groups go stale and are swept, never piling up beyond the bound's
    // reach; a group evicted and made again has one window, closed once.
    let mut engine = Engine::new(analyses(REFUNDS), 10);
    let mut events: Vec<(CloudEvent, i64)> = (0..5000)
        .map(|i| {
            ev(
                &format!("e{i}"),
                "refund",
                1,
                json!({"order": format!("o{i}"), "amount": 1}),
            )
        })
        .collect();
    // o4999 is held; o0 comes back after its eviction, twice, so its new window meets n >= 2.
    events.push(ev(
        "again-1",
        "refund",
        2,
        json!({"order": "o0", "amount": 1}),
    ));
    events.push(ev(
        "again-2",
        "refund",
        3,
        json!({"order": "o0", "amount": 1}),
    ));
    let (findings, _) = feed(&mut engine, &events, "t");
    assert!(findings.is_empty());
    let state = engine.state(0);
    assert_eq!(state.groups(), 10);
    assert_eq!(state.evicted, 4991, "5001 groups made, 10 held");
    assert!(
        state.timers.len() < 1100,
        "{} timers held for 10 groups",
        state.timers.len()
    );
    let mut out = Vec::new();
    engine.flush(&mut out);
    let keys: Vec<&str> = out.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["o0"], "only o0's window met the condition, once");
    let data = out[0].event.data.as_ref().expect("data");
    assert_eq!(data["events"], json!(2));
    assert_eq!(data["group"], json!({"data.order": "o0"}));
    assert_eq!(out[0].event.subject.as_deref(), Some("o0"));
}

#[test]
fn the_group_bound_follows_every_use_not_the_first() {
    // Groups used again and again, in an order that differs from the one they came in: each
    // eviction takes the group whose latest use is the oldest.
    let mut engine = Engine::new(analyses(REFUNDS), 3);
    let orders = [
        "o1", "o2", "o3", "o1", "o1", "o2", "o4", "o1", "o5", "o2", "o6",
    ];
    let events: Vec<(CloudEvent, i64)> = orders
        .iter()
        .enumerate()
        .map(|(i, order)| {
            ev(
                &format!("e{i}"),
                "refund",
                i as i64 + 1,
                json!({"order": order}),
            )
        })
        .collect();
    feed(&mut engine, &events, "t");
    // o3 goes for o4, o2 (used before o1's latest use) for o5, o4 for o2, o1 for o6.
    let mut held: Vec<&str> = engine.state(0).groups.keys().map(|k| &**k).collect();
    held.sort_unstable();
    assert_eq!(held, ["o2", "o5", "o6"]);
    assert_eq!(engine.state(0).evicted, 4);
    assert_eq!(
        engine.state(0).recency.len(),
        3,
        "every group listed once: {:?}",
        engine.state(0).recency
    );
}

#[test]
fn a_restored_checkpoint_skips_what_it_reflects_and_ends_the_same() {
    let events: Vec<(CloudEvent, i64)> = (0..40)
        .map(|i| {
            ev(
                &format!("e{i}"),
                "refund",
                i * 4,
                json!({"order": format!("o{}", i % 3), "amount": i}),
            )
        })
        .collect();
    let mut whole = Engine::new(analyses(REFUNDS), 100);
    let (want, _) = feed(&mut whole, &events, "t");

    let mut first = Engine::new(analyses(REFUNDS), 100);
    let mut got = Vec::new();
    for (offset, (event, time_ms)) in events.iter().enumerate().take(25) {
        first.observe(
            Observation {
                event: event.into(),
                time_ms: *time_ms,
                topic: "t",
                offset: offset as i64,
            },
            &mut got,
        );
    }
    let snapshot = first.snapshot(0).expect("snapshot");
    // Crash: findings after the checkpoint are emitted again by the replay.
    let mut restored = Engine::new(analyses(REFUNDS), 100);
    restored.restore(0, &snapshot).expect("restore");
    assert_eq!(restored.state(0).next_offset("t"), 25);
    let (again, _) = feed(&mut restored, &events, "t");
    // Windows closing at one watermark close in no promised order across groups; a finding
    // emitted again must be the same finding, so only exact copies fold into one.
    let mut all: Vec<Finding> = got.into_iter().chain(again).collect();
    all.sort_by(|a, b| a.event.id.cmp(&b.event.id));
    all.dedup();
    let mut want = want;
    want.sort_by(|a, b| a.event.id.cmp(&b.event.id));
    assert_eq!(all, want);
}

#[test]
fn pending_absences_survive_a_checkpoint() {
    let text = "[unsettled]\nabsence = { first = \"auth\", then = \"settle\", correlate = \"data.p\", within = \"30m\" }\nemit = \"unsettled\"\n";
    let mut before = Engine::new(analyses(text), 100);
    let (out, _) = feed(&mut before, &[ev("a1", "auth", 0, json!({"p": "p1"}))], "t");
    assert!(out.is_empty());
    let mut after = Engine::new(analyses(text), 100);
    after
        .restore(0, &before.snapshot(0).expect("snapshot"))
        .expect("restore");
    let mut out = Vec::new();
    let (tick, t) = ev("z", "other", 100, json!({}));
    after.observe(
        Observation {
            event: (&tick).into(),
            time_ms: t,
            topic: "t",
            offset: 1,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1, "the restored timer fires");
    assert_eq!(out[0].key, "p1");
}

#[test]
fn a_record_forwarded_twice_from_one_source_partition_counts_once() {
    let mut engine = Engine::new(analyses(REFUNDS), 100);
    engine.track_for(0, "events/0");
    engine.track_for(0, "events/1");
    let mut out = Vec::new();
    let one = ev("a", "refund", 1, json!({"order": "o1", "amount": 10}));
    let two = ev("b", "refund", 2, json!({"order": "o1", "amount": 5}));
    // Source partition 0 forwards offsets 7 and 8, then (after a crash) 7 and 8 again.
    let mut seen = Vec::new();
    for (event, offset) in [(&one, 7), (&two, 8), (&one, 7), (&two, 8)] {
        seen.push(engine.observe_for(0, obs(event, "events/0", offset), &mut out));
    }
    assert_eq!(seen.iter().map(|o| o.counted).sum::<u32>(), 2);
    assert_eq!(seen.iter().map(|o| o.skipped).sum::<u32>(), 2);
    // Source partition 1 has sent nothing: it holds the watermark back until it is idle.
    let late = ev("c", "refund", 200, json!({"order": "o2", "amount": 1}));
    engine.observe_for(0, obs(&late, "events/0", 9), &mut out);
    assert!(out.is_empty(), "{out:?}");
    engine.set_idle_for(0, "events/1", true, &mut out);
    assert_eq!(out.len(), 1);
    let values = &out[0].event.data.as_ref().expect("data")["values"];
    assert_eq!(values["n"], json!(2.0));
    assert_eq!(values["total"], json!(15.0));
}

fn obs<'a>(
    (event, time_ms): &'a (CloudEvent, i64),
    topic: &'a str,
    offset: i64,
) -> Observation<'a> {
    Observation {
        event: event.into(),
        time_ms: *time_ms,
        topic,
        offset,
    }
}

#[test]
fn a_seasonal_anomaly_judges_each_window_against_the_same_place_in_past_seasons() {
    // Four-minute seasons: 20 orders in each of a season's first two minutes, 2 in each of its
    // last two; then minute 24, a season's first, brings 2. One baseline per place in the
    // season has learned 20 there and fires; one baseline for every minute has learned the
    // swing as spread, and 2 is within it.
    let declare = |season: &str| {
        analyses(&format!(
            "[rate]\ntypes = [\"order\"]\nwindow = {{ tumbling = \"1m\" }}\naggregates = {{ orders = \"count\" }}\nanomaly = {{ metric = \"orders\", warmup = 3, threshold = 3.0{season} }}\nemit = \"rate.odd\"\n"
        ))
    };
    let mut events = Vec::new();
    let mut n = 0;
    for minute in 0..26 {
        let per = if minute % 4 < 2 && minute != 24 {
            20
        } else {
            2
        };
        for _ in 0..per {
            n += 1;
            events.push(ev(&format!("o{n}"), "order", minute, json!({})));
        }
    }
    // Closes every window up to minute 25.
    events.push(ev("tick", "order", 26, json!({})));

    let (seasonal, _) = feed(
        &mut Engine::new(declare(", season = \"4m\""), 100),
        &events,
        "t",
    );
    let starts: Vec<&Value> = seasonal
        .iter()
        .map(|f| &f.event.data.as_ref().expect("data")["window"]["start"])
        .collect();
    assert_eq!(
        starts,
        [&json!("1970-01-01T00:24:00.000Z")],
        "only the quiet busy minute: {seasonal:?}"
    );
    let anomaly = &seasonal[0].event.data.as_ref().expect("data")["anomaly"];
    assert_eq!(anomaly["season_ms"], json!(240_000));
    assert_eq!(anomaly["season_offset_ms"], json!(0));
    assert_eq!(anomaly["mean"], json!(20.0));

    let (flat, _) = feed(&mut Engine::new(declare(""), 100), &events, "t");
    assert!(
        flat.is_empty(),
        "one baseline for every minute takes the swing for spread: {flat:?}"
    );
}

#[test]
fn a_season_must_be_a_whole_number_of_windows() {
    let declared = "[rate]\ntypes = [\"order\"]\nwindow = { tumbling = \"1h\" }\naggregates = { orders = \"count\" }\nanomaly = { metric = \"orders\", season = \"90m\" }\nemit = \"rate.odd\"\n";
    let error = parse_file(Path::new("t.toml"), declared)
        .expect_err("90m is not a whole number of 1h windows")
        .to_string();
    assert!(
        error.contains("\"rate\"") && error.contains("anomaly.season") && error.contains("1h 30m"),
        "{error}"
    );
    let daily = declared.replace("90m", "1d");
    let parsed = parse_file(Path::new("t.toml"), &daily).expect("a day of hours");
    let Kind::Windowed {
        anomaly: Some(a), ..
    } = &parsed[0].kind
    else {
        panic!("an anomaly analysis: {parsed:?}");
    };
    assert_eq!(a.season, Some(86_400_000));
    // Without a season it reads as before seasons existed, so a checkpoint's fingerprint (of
    // the declaration's Debug text) still matches and the learned baselines are kept.
    let plain = parse_file(
        Path::new("t.toml"),
        &declared.replace(", season = \"90m\"", ""),
    )
    .expect("no season");
    let Kind::Windowed {
        anomaly: Some(a), ..
    } = &plain[0].kind
    else {
        panic!("an anomaly analysis: {plain:?}");
    };
    assert_eq!(
        format!("{a:?}"),
        "Anomaly { metric: 0, alpha: 0.2, threshold: 3.0, warmup: 10, direction: Both }"
    );
}

/// The analytics role reads admitted events with their data on a tape: its findings are the
/// ones the same events give with their data as a `Value` (groups by text, number and nested
/// field, a filter, numeric aggregates from numbers and numeric strings, distinct values).
#[test]
fn events_read_on_a_tape_find_what_their_values_find() {
    let decls = analyses(
        r#"
[by_customer]
types = ["order"]
group_by = ["data.customer", "data.tier", "data.address.country", "data.items.0.sku"]
where = { "data.channel" = "web" }
window = { tumbling = "1m" }
aggregates = { n = "count", total = "sum(data.amount)", top = "max(data.amount)", low = "min(data.amount)", mean = "avg(data.amount)", skus = "count_distinct(data.items.0.sku)", p50 = "p50(data.amount)" }
condition = "n >= 1"
emit = "orders.seen"
"#,
    );
    let texts: Vec<String> = (0..40)
        .map(|i| {
            let amount = if i % 3 == 0 {
                json!(format!("{}.5", i))
            } else {
                json!(i * 7 % 13)
            };
            let channel = if i % 5 == 0 { "shop" } else { "web" };
            json!({
                "specversion": "1.0", "id": format!("e{i}"), "source": "/s", "type": "order",
                "time": format!("2026-12-03T08:{:02}:00Z", i / 4),
                "data": {
                    "customer": format!("c\"{}", i % 3), "tier": i % 2, "channel": channel,
                    "amount": amount, "address": {"country": if i % 2 == 0 { "DE" } else { "FR" }},
                    "items": [{"sku": format!("s{}", i % 4)}, {"sku": "other"}]
                }
            })
            .to_string()
        })
        .collect();
    let findings = |on_tape: bool| {
        let mut engine = Engine::new(decls.clone(), 100);
        let mut out = Vec::new();
        for (offset, text) in texts.iter().enumerate() {
            let event = CloudEvent::decode_structured_tape(text.as_bytes()).expect("decodes");
            let whole = event.view().to_event();
            let read = if on_tape {
                event.view()
            } else {
                EventRef::from(&whole)
            };
            let time_ms = event.parsed_time().expect("time").timestamp_millis();
            engine.observe(
                Observation {
                    event: read,
                    time_ms,
                    topic: "t",
                    offset: offset as i64,
                },
                &mut out,
            );
        }
        engine.flush(&mut out);
        out
    };
    let by_value = findings(false);
    assert!(by_value.len() > 10, "{by_value:?}");
    assert!(
        by_value.iter().any(|f| f.key.contains("c\"1/1/FR/s")),
        "{:?}",
        by_value.iter().map(|f| &f.key).collect::<Vec<_>>()
    );
    assert_eq!(findings(true), by_value);
}
