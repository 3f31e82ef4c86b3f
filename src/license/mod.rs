//! License knowledge: the SPDX license texts (a built-in index and identification of
//! reproduced texts), license markers in generated code (`SPDX-License-Identifier:` lines,
//! copyright notices, license header phrases), and the resolution of each corpus file's license
//! when an index is built.

pub mod builtin;
pub mod identify;
pub mod markers;
pub mod resolve;
pub mod texts;

pub use identify::{Identification, LicenseDb};

use std::sync::Arc;

use crate::index::Index;
use crate::matcher::Finding;

/// Every finding of a finished scan, with license-text runs collapsed into one identified
/// finding per region (see [`collapse`]); other findings carry no identification.
pub fn with_regions(
    findings: Vec<Finding>,
    indexes: &[Arc<Index>],
    text: &str,
) -> Vec<(Finding, Option<Identification>)> {
    let (lic, other): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.kind == crate::matcher::MatchKind::LicenseText);
    let mut out: Vec<(Finding, Option<Identification>)> =
        other.into_iter().map(|f| (f, None)).collect();
    out.extend(collapse(lic, indexes, text));
    out
}

/// Output bytes between two license-text runs that still make them one reproduction (a changed
/// word or a reflowed comment breaks a run; the text goes on).
const REGION_GAP: u64 = 200;

/// Collapses license-text findings into one per reproduced region: runs of many license
/// texts overlap (the MIT grant is in dozens), so the runs whose output spans overlap or nearly
/// touch are one region, identified once from its own text. The finding kept cites the
/// identified license's own document when one of the runs is from it, else the longest run;
/// its output span is the whole region. `text` is the scanned output.
pub fn collapse(
    mut findings: Vec<Finding>,
    indexes: &[Arc<Index>],
    text: &str,
) -> Vec<(Finding, Option<Identification>)> {
    findings.sort_by_key(|f| (f.output_start, std::cmp::Reverse(f.output_end)));
    let mut groups: Vec<Vec<Finding>> = Vec::new();
    let mut end = 0u64;
    for f in findings {
        match groups.last_mut() {
            Some(g) if f.output_start <= end + REGION_GAP => {
                end = end.max(f.output_end);
                g.push(f);
            }
            _ => {
                end = f.output_end;
                groups.push(vec![f]);
            }
        }
    }
    groups
        .into_iter()
        .filter_map(|g| {
            let start = g.iter().map(|f| f.output_start).min()?;
            let end = g.iter().map(|f| f.output_end).max()?;
            let id = text
                .get(start as usize..end as usize)
                .and_then(|t| LicenseDb::builtin().identify(t));
            let own = |f: &&Finding| {
                id.as_ref().is_some_and(|id| {
                    indexes
                        .get(f.index)
                        .and_then(|ix| ix.doc(f.doc))
                        .is_some_and(|d| id.same_text.contains(&d.path))
                })
            };
            let best = g
                .iter()
                .filter(own)
                .max_by_key(|f| f.units)
                .or_else(|| g.iter().max_by_key(|f| f.units))?;
            let mut kept = best.clone();
            kept.output_start = start;
            kept.output_end = end;
            Some((kept, id))
        })
        .collect()
}
