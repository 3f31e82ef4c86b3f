//! The response pipeline and every provider adapter: arbitrary upstream bytes for each API,
//! against the committed fixture index; never a panic, and every released frame is whole.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use verbatim::index::Index;
use verbatim::policy::Policy;
use verbatim::proxy::api::Api;
use verbatim::proxy::pipeline::{Hold, Pipeline, ScanSetup};

fn index() -> Arc<Index> {
    static I: OnceLock<Arc<Index>> = OnceLock::new();
    I.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/index-v2");
        Arc::new(Index::open(dir).expect("fixture index"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let api = match data[0] % 4 {
        0 => Api::ChatCompletions,
        1 => Api::Completions,
        2 => Api::Responses,
        _ => Api::Messages,
    };
    let hold = if data[1] & 1 == 0 {
        Hold::Strict
    } else {
        Hold::None
    };
    let size = (data[1] as usize >> 1) % 31 + 1;
    let setup = ScanSetup {
        indexes: vec![index()],
        exempt: Arc::default(),
        policy: Arc::new(Policy::builtin()),
        scope: Default::default(),
        hold,
        max_event_bytes: 1 << 16,
        max_holdback_bytes: 1 << 16,
        max_response_bytes: 1 << 20,
    };
    let mut p = Pipeline::new(api, setup);
    for c in data[2..].chunks(size) {
        for frame in p.push(c) {
            assert!(!frame.is_empty());
        }
        let _ = p.take_decisions();
    }
    let _ = if data[1] & 2 == 0 {
        p.finish()
    } else {
        p.abort()
    };
});
