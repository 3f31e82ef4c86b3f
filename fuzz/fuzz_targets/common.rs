//! What the `pipeline` and `responses` fuzz targets share: the committed fixture index, a
//! policy that redacts everything, and the pieces of a redacted span to look for in released
//! text. Included by each (`#[path]`), as fuzz targets are separate binaries.
use std::sync::{Arc, OnceLock};

use verbatim::index::Index;
use verbatim::policy::Policy;

pub fn index() -> Arc<Index> {
    static I: OnceLock<Arc<Index>> = OnceLock::new();
    I.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/index-v5");
        Arc::new(Index::open(dir).expect("fixture index"))
    })
    .clone()
}

pub fn redact_all() -> Arc<Policy> {
    static P: OnceLock<Arc<Policy>> = OnceLock::new();
    P.get_or_init(|| {
        let src = "version = 1\nname = \"redact-all\"\n[defaults]\naction = \"redact\"\n";
        Arc::new(
            Policy::parse(std::path::Path::new("redact-all.toml"), src.to_string())
                .expect("policy"),
        )
    })
    .clone()
}

/// Pieces of `span` to look for in released text: 32 bytes every 16 (on character
/// boundaries), so a span released in part — cut around another redaction inside it — is
/// caught, not only a span released whole.
pub fn windows(span: &str) -> Vec<&str> {
    let fit = |mut i: usize| {
        while !span.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut a = 0;
    while a + 32 <= span.len() {
        let (s, e) = (fit(a), fit(a + 32));
        if e > s {
            out.push(&span[s..e]);
        }
        a += 16;
    }
    out
}

/// `text` with every redaction placeholder (`[verbatim: redacted …]`) replaced by a control
/// character, so a window of a redacted span cannot be formed by a placeholder's end and the
/// text that follows it.
pub fn without_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(a) = rest.find("[verbatim: redacted") {
        out.push_str(&rest[..a]);
        out.push('\u{1}');
        rest = match rest[a..].find(']') {
            Some(b) => &rest[a + b + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}
