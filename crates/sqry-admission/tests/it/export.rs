//! Exported numbers: the Prometheus page of a known state, line by line, and `Status` as JSON.

use std::collections::HashSet;

use sqry_admission::ReserveRequest;

use crate::support::{key, load, manager};

/// A known state: a 600-byte version held by a reader and replaced by a 300-byte one (so 600
/// retained, 300 loaded), a 50-byte reservation in flight, a refused request, and a key whose
/// name needs escaping.
#[test]
fn prometheus_page_reports_the_ledger_counters_and_entries() {
    let m = manager(1_000);
    let old = load(&m, "repo \"a\"", 600);
    let r = m
        .reserve(&key("repo \"a\""), ReserveRequest::new(300))
        .expect("fits beside the old version");
    let new = m.publish(r, crate::support::blob(300)).expect("publish");
    m.register(key("b"));
    let pending = m.reserve(&key("b"), ReserveRequest::new(50)).expect("fits");
    let _ = m
        .reserve(&key("b"), ReserveRequest::new(900))
        .expect_err("refused");
    let text = m.status().prometheus();
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "# TYPE sqry_admission_bytes gauge",
        "sqry_admission_limit_bytes 1000",
        r#"sqry_admission_bytes{tier="loaded"} 300"#,
        r#"sqry_admission_bytes{tier="reserved"} 50"#,
        r#"sqry_admission_bytes{tier="retained"} 600"#,
        "sqry_admission_high_water_bytes 950",
        r#"sqry_admission_versions{tier="retained"} 1"#,
        "# TYPE sqry_admission_rejections_total counter",
        r#"sqry_admission_rejections_total{reason="budget"} 1"#,
        "sqry_admission_published_total 2",
        "sqry_admission_replaced_total 1",
        r#"sqry_admission_entries{state="loaded"} 1"#,
        r#"sqry_admission_entries{state="unloaded"} 1"#,
        r#"sqry_admission_entry_bytes{key="repo \"a\"",state="loaded"} 300"#,
        r#"sqry_admission_entry_readers{key="repo \"a\""} 1"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }
    // Every family has one HELP and one TYPE line, and every sample belongs to the family
    // announced before it.
    let mut families = HashSet::new();
    let mut current = "";
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("name");
            assert!(families.insert(name.to_string()), "family {name} twice");
            current = name;
        } else if !line.starts_with("# HELP ") {
            assert!(
                line.starts_with(current),
                "{line:?} outside its family {current}"
            );
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line:?}");
        }
    }
    drop((old, new, pending));
}

/// `Status` serialises (feature `serde`) with the ledger, the counters and every entry.
#[test]
fn status_serialises_to_json() {
    let m = manager(1_000);
    let held = load(&m, "k", 400);
    let json = serde_json::to_value(m.status()).expect("serialises");
    assert_eq!(json["ledger"]["loaded"], 400);
    assert_eq!(json["ledger"]["limit"], 1_000);
    assert_eq!(json["metrics"]["published"], 1);
    assert_eq!(json["entries"][0]["key"], "k");
    assert_eq!(json["entries"][0]["state"], "Loaded");
    assert_eq!(json["entries"][0]["readers"], 1);
    drop(held);
}
