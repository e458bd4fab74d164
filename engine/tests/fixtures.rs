//! The committed fixtures are what the generator makes, and they are realistic enough
//! to exercise every tier and category.
#![allow(clippy::unwrap_used)]

#[path = "../examples/gen_fixtures.rs"]
mod generator;

use std::collections::HashSet;

use engine::model::{Category, Signal, Tick};
use engine::policy::TierPolicy;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn committed_fixtures_match_the_seeded_generator() {
    assert_eq!(
        fixture("signals.jsonl"),
        generator::jsonl(&generator::signals()),
        "run: cargo run -p signalcast-engine --example gen_fixtures"
    );
    assert_eq!(fixture("ticks.jsonl"), generator::jsonl(&generator::ticks()));
}

#[test]
fn signals_cover_the_categories_and_the_confidence_spread() {
    let signals: Vec<Signal> =
        fixture("signals.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(signals.len() >= 1_000);
    for s in &signals {
        s.validate(4096).unwrap();
    }
    let cats: HashSet<Category> = signals.iter().map(|s| s.category).collect();
    assert_eq!(cats.len(), 4);
    let conf: Vec<u16> = signals.iter().map(|s| s.confidence.hundredths()).collect();
    assert!(*conf.iter().min().unwrap() < 4_200 && *conf.iter().max().unwrap() > 9_800);
    let ids: HashSet<_> = signals.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), signals.len(), "ids are unique");
    // Every tier gets a share, and some are dropped by the global bar.
    let p = TierPolicy::default();
    for t in engine::model::Tier::ALL {
        assert!(
            signals.iter().filter(|s| p.passes_global(s.confidence) && p.admits(t, s.confidence)).count()
                > 50
        );
    }
    assert!(signals.iter().filter(|s| !p.passes_global(s.confidence)).count() > 300);

    let ticks: Vec<Tick> = fixture("ticks.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let symbols: HashSet<_> = ticks.iter().map(|t| (t.symbol, t.exchange)).collect();
    assert!(
        signals.iter().all(|s| symbols.contains(&(s.symbol, s.exchange))),
        "every signal's symbol has ticks"
    );
}
