//! The SPDX license and exception texts the `spdx` crate ships (its `text` feature), grouped by
//! identical text: `GPL-2.0`, `GPL-2.0-only` and `GPL-2.0-or-later` share one text, and the
//! text alone cannot say which applies.

use std::sync::LazyLock;

/// One distinct license or exception text.
#[derive(Debug)]
pub struct LicenseText {
    /// The id reported for the text: the first id that is not deprecated, preferring `-only`.
    pub id: &'static str,
    /// Every id with this exact text.
    pub ids: Vec<&'static str>,
    pub text: &'static str,
    pub exception: bool,
}

static ALL: LazyLock<Vec<LicenseText>> = LazyLock::new(|| {
    let mut out: Vec<LicenseText> = Vec::new();
    for (list, exception) in [
        (spdx::text::LICENSE_TEXTS, false),
        (spdx::text::EXCEPTION_TEXTS, true),
    ] {
        // The crate lists ids in order; ids sharing a text share the same `&'static str`.
        let mut by_text: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for &(id, text) in list {
            match by_text.iter_mut().find(|(t, _)| *t == text) {
                Some((_, ids)) => ids.push(id),
                None => by_text.push((text, vec![id])),
            }
        }
        for (text, ids) in by_text {
            if text.trim().is_empty() {
                continue; // NOASSERTION
            }
            let id = ids
                .iter()
                .find(|i| i.ends_with("-only") && !deprecated(i))
                .or_else(|| ids.iter().find(|i| !deprecated(i)))
                .copied()
                .unwrap_or(ids[0]);
            out.push(LicenseText {
                id,
                ids,
                text,
                exception,
            });
        }
    }
    out
});

/// Whether an SPDX license or exception id is deprecated.
pub fn deprecated(id: &str) -> bool {
    spdx::license_id(id).is_some_and(|l| l.is_deprecated())
        || spdx::exception_id(id).is_some_and(|e| e.is_deprecated())
}

/// Every distinct text, licenses first, then exceptions.
pub fn all() -> &'static [LicenseText] {
    &ALL
}

/// The text of an SPDX id, if the crate ships one.
pub fn text_of(id: &str) -> Option<&'static LicenseText> {
    all().iter().find(|t| t.ids.contains(&id))
}
