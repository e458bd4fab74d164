//! Relayed `signals.<tier>` records: whatever a record holds, the gateway either drops
//! it with a reason or hands on bytes that are UTF-8 JSON of an enriched signal, within
//! the cap, that pass the same check again unchanged; no panic. Also the producer
//! signature check of `raw-signals` on arbitrary headers.
#![no_main]

use std::time::Duration;

use engine::feed::StaticKeys;
use engine::kafka::signing::{Claimed, verify};
use engine::kafka::value::relayed_signal;
use engine::model::Category;
use libfuzzer_sys::fuzz_target;

const CAP: usize = 8192;

fuzz_target!(|data: &[u8]| {
    // First byte picks the sc-category header; the rest is the value.
    let Some((&pick, value)) = data.split_first() else { return };
    let category = [None, Some(Category::Equity), Some(Category::Crypto), Some(Category::Forex), Some(Category::Commodity)]
        [usize::from(pick) % 5];
    match relayed_signal(value, category, CAP) {
        Ok(out) => {
            assert!(out.len() <= CAP + 1024, "{} bytes out of {}", out.len(), value.len());
            assert!(std::str::from_utf8(&out).is_ok());
            assert_eq!(relayed_signal(&out, category, CAP + 1024).as_deref(), Ok(out.as_slice()));
        }
        Err(e) => assert!(!e.code().is_empty()),
    }
    // The same bytes as a signed raw-signals record's headers: refused with a reason.
    let keys = StaticKeys::new([("p".to_owned(), "k".to_owned())]);
    let third = value.len() / 3;
    let (a, rest) = value.split_at(third);
    let (b, c) = rest.split_at(third);
    let claimed = Claimed { producer: Some(b"p"), signed_at: Some(a), signature: Some(b) };
    if let Err(e) = verify(&keys, claimed, b"", c, 1_800_000_000_000, Duration::from_secs(600)) {
        assert!(!e.code().is_empty());
    }
});
