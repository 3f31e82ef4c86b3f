//! `verbatim report`: a self-contained HTML page for compliance, made from the audit trail —
//! decisions over time, by action, top sources, licenses and tenants, and the latest blocks
//! with their evidence. Charts are inline SVG; the page loads nothing from anywhere, so it
//! works offline and can be mailed or archived as it is.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// What was read from the audit log.
#[derive(Debug, Default)]
pub struct Summary {
    pub decisions: Vec<Value>,
    pub stream_ends: Vec<Value>,
    /// Lines that were not audit records (reported, not fatal).
    pub skipped_lines: usize,
}

/// Reads audit JSON Lines, keeping records at or after `since` (RFC 3339, compared as text,
/// which orders correctly for the UTC timestamps the proxy writes).
pub fn read(text: &str, since: Option<&str>) -> Summary {
    let mut s = Summary::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            s.skipped_lines += 1;
            continue;
        };
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let time = data.get("time").and_then(Value::as_str).unwrap_or("");
        if since.is_some_and(|since| time < since) {
            continue;
        }
        match v.get("type").and_then(Value::as_str) {
            Some("decision") => s.decisions.push(data),
            Some("stream_end") => s.stream_ends.push(data),
            _ => s.skipped_lines += 1,
        }
    }
    // Rotated files may come in any order: records are shown in time order.
    s.decisions
        .sort_by(|a, b| field(a, "time").cmp(field(b, "time")));
    s.stream_ends
        .sort_by(|a, b| field(a, "time").cmp(field(b, "time")));
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

const ACTIONS: [(&str, &str); 5] = [
    ("block", "#c0392b"),
    ("redact", "#d35400"),
    ("annotate", "#2874a6"),
    ("log", "#7f8c8d"),
    ("allow", "#27ae60"),
];

fn category_color(c: &str) -> &'static str {
    match c {
        "copyleft" => "#922b21",
        "weak-copyleft" => "#ca6f1e",
        "proprietary" => "#6c3483",
        "permissive" => "#1e8449",
        "public-domain" => "#2e86c1",
        _ => "#839192",
    }
}

/// Shortens a label in the middle, so both the corpus and the file name stay readable.
fn shorten(label: &str, max: usize) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= max {
        return label.to_string();
    }
    let head = max / 3;
    let tail = max - head - 1;
    chars[..head].iter().collect::<String>()
        + "…"
        + &chars[chars.len() - tail..].iter().collect::<String>()
}

/// A horizontal bar chart of (label, count), top `n`; `color` maps a label to its colour.
fn bars(
    title: &str,
    mut rows: Vec<(String, usize)>,
    n: usize,
    color: impl Fn(&str) -> &'static str,
) -> String {
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.truncate(n);
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
    let h = 24 * rows.len().max(1) + 10;
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 520 {h}\" width=\"520\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    if rows.is_empty() {
        s += "<text x=\"0\" y=\"20\" class=\"muted\">nothing recorded</text>";
    }
    for (i, (label, count)) in rows.iter().enumerate() {
        let y = 24 * i + 4;
        let w = (260.0 * *count as f64 / max as f64).max(2.0);
        let short = shorten(label, 30);
        let color = color(label);
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" class=\"label\"><title>{}</title>{}</text><rect x=\"230\" y=\"{y}\" width=\"{w:.1}\" height=\"18\" fill=\"{color}\" rx=\"2\"/><text x=\"{:.1}\" y=\"{}\" class=\"num\">{count}</text>",
            y + 14,
            esc(label),
            esc(&short),
            236.0 + w,
            y + 14
        );
    }
    s + "</svg></figure>"
}

/// Decisions per day (or per hour when everything is within two days), stacked by action.
fn timeline(decisions: &[Value]) -> String {
    let days: std::collections::BTreeSet<&str> = decisions
        .iter()
        .map(|d| field(d, "time").get(..10).unwrap_or(""))
        .collect();
    let by_hour = days.len() <= 2;
    let key = |t: &str| -> String {
        if by_hour {
            t.get(..13).unwrap_or(t).replace('T', " ") + "h"
        } else {
            t.get(..10).unwrap_or(t).to_string()
        }
    };
    let mut buckets: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
    for d in decisions {
        *buckets
            .entry(key(field(d, "time")))
            .or_default()
            .entry(field(d, "action"))
            .or_default() += 1;
    }
    let n = buckets.len().max(1);
    let max = buckets
        .values()
        .map(|m| m.values().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (w, h) = (760.0, 220.0);
    let bw = (w - 60.0) / n as f64;
    let mut s = format!(
        "<figure class=\"wide\"><figcaption>Decisions {}, by action</figcaption><svg viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"decisions over time\">",
        if by_hour { "per hour" } else { "per day" },
        h + 40.0,
        h + 40.0
    );
    let _ = write!(
        s,
        "<line x1=\"50\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" class=\"axis\"/><text x=\"0\" y=\"14\" class=\"num\">{max}</text><text x=\"0\" y=\"{h}\" class=\"num\">0</text>"
    );
    for (i, (bucket, counts)) in buckets.iter().enumerate() {
        let x = 55.0 + bw * i as f64;
        let mut y = h;
        for (action, color) in ACTIONS {
            let c = counts.get(action).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let bh = (h - 10.0) * c as f64 / max as f64;
            y -= bh;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{} {action}: {c}</title></rect>",
                (bw * 0.8).max(1.0),
                esc(bucket)
            );
        }
        if n <= 12 || i % n.div_ceil(12) == 0 {
            let _ = write!(
                s,
                "<text x=\"{x:.1}\" y=\"{}\" class=\"tick\">{}</text>",
                h + 16.0,
                esc(bucket)
            );
        }
    }
    s + "</svg></figure>"
}

/// Renders the whole page.
pub fn html(s: &Summary, source: &str, generated: &str) -> String {
    let count = |k: &str| -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for d in &s.decisions {
            let v = match k {
                "source" => format!("{}:{}", field(d, "corpus"), field(d, "doc")),
                "tenant" => d
                    .get("tenant")
                    .and_then(Value::as_str)
                    .unwrap_or("(none)")
                    .to_string(),
                // Records from before the field existed have no category.
                "category" => match field(d, "category") {
                    "" => "(not recorded)".to_string(),
                    c => c.to_string(),
                },
                _ => field(d, k).to_string(),
            };
            *m.entry(v).or_default() += 1;
        }
        m.into_iter().collect()
    };
    let by_action = count("action");
    let total = s.decisions.len();
    let blocks: Vec<&Value> = s
        .decisions
        .iter()
        .filter(|d| field(d, "action") == "block")
        .collect();
    let ends = |e: &str| {
        s.stream_ends
            .iter()
            .filter(|x| field(x, "end") == e)
            .count()
    };
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Verbatim report</title>
<style>
body{{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1c2833;padding:0 1rem}}
h1{{font-size:1.6rem;margin-bottom:.2rem}} h2{{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d5d8dc;padding-bottom:.3rem}}
.muted,.sub{{color:#626567}} .cards{{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}}
.card{{border:1px solid #d5d8dc;border-radius:8px;padding:.8rem 1.1rem;min-width:120px}} .card b{{display:block;font-size:1.6rem}}
.grid{{display:flex;flex-wrap:wrap;gap:1.5rem}} figure{{margin:0}} figcaption{{font-weight:600;margin-bottom:.4rem}}
svg text{{font-size:12px;fill:#1c2833}} svg .num{{fill:#424949}} svg .tick{{font-size:11px;fill:#626567}} svg .axis{{stroke:#aab7b8}}
table{{border-collapse:collapse;width:100%;font-size:13px}} th,td{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e5e8e8;vertical-align:top}}
th{{background:#f4f6f6}} code{{font-size:12px;word-break:break-all}} .legend span{{display:inline-block;margin-right:1rem}}
.legend i{{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}}
</style></head><body>
<h1>Verbatim report</h1>
<div class="sub">From <code>{src}</code> · generated {gen} · {n} decisions on {r} responses{skip}</div>
<div class="cards">"#,
        src = esc(source),
        gen = esc(generated),
        n = total,
        r = s.stream_ends.len(),
        skip = if s.skipped_lines > 0 { format!(" · {} unreadable lines skipped", s.skipped_lines) } else { String::new() },
    );
    for (action, color) in ACTIONS {
        let c = by_action
            .iter()
            .find(|x| x.0 == action)
            .map(|x| x.1)
            .unwrap_or(0);
        let _ = write!(
            page,
            "<div class=\"card\" style=\"border-top:4px solid {color}\"><b>{c}</b>{action}</div>"
        );
    }
    let _ = write!(
        page,
        "<div class=\"card\"><b>{}</b>responses blocked</div><div class=\"card\"><b>{}</b>client cancelled</div><div class=\"card\"><b>{}</b>upstream errors</div></div>",
        ends("blocked"),
        ends("client_cancelled"),
        ends("upstream_error")
    );
    page += "<div class=\"legend\">";
    for (action, color) in ACTIONS {
        let _ = write!(
            page,
            "<span><i style=\"background:{color}\"></i>{action}</span>"
        );
    }
    page += "</div>";
    page += &timeline(&s.decisions);
    page += "<h2>Where reproductions come from</h2><div class=\"grid\">";
    let action_color = |a: &str| {
        ACTIONS
            .iter()
            .find(|x| x.0 == a)
            .map(|x| x.1)
            .unwrap_or("#2874a6")
    };
    page += &bars("Top sources", count("source"), 10, |_| "#5d6d7e");
    page += &bars("Top licenses", count("license"), 10, |_| "#7d3c98");
    page += &bars(
        "Decisions by license category",
        count("category"),
        6,
        category_color,
    );
    page += &bars("Decisions by action", by_action.clone(), 5, action_color);
    page += &bars(
        "Top tenants (tenant header, or hash of the API key)",
        count("tenant"),
        10,
        |_| "#117a65",
    );
    page += "</div>";
    let _ = write!(page, "<h2>Latest blocks ({} in all)</h2>", blocks.len());
    if blocks.is_empty() {
        page += "<p class=\"muted\">No response was blocked in this period.</p>";
    } else {
        page += "<table><tr><th>Time (UTC)</th><th>Request</th><th>Tenant · model</th><th>Source</th><th>License · rights</th><th>Run</th><th>Rule · reason</th><th>Evidence (SHA-256 of the span)</th></tr>";
        for d in blocks.iter().rev().take(50) {
            let url = field(d, "url");
            let src = format!("{}:{}", field(d, "corpus"), field(d, "doc"));
            let src_html = if url.is_empty() {
                esc(&src)
            } else {
                format!("<a href=\"{}\">{}</a>", esc(url), esc(&src))
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td><code>{}</code></td><td>{} · {}</td><td>{}<br><span class=\"muted\">bytes {}–{}</span></td><td>{} · {}</td><td>{} {} units</td><td>{}{}{}</td><td><code>{}</code></td></tr>",
                esc(&field(d, "time").replace('T', " ")),
                esc(field(d, "request_id")),
                esc(d.get("tenant").and_then(Value::as_str).unwrap_or("—")),
                esc(d.get("model").and_then(Value::as_str).unwrap_or("—")),
                src_html,
                d.get("source_start").and_then(Value::as_u64).unwrap_or(0),
                d.get("source_end").and_then(Value::as_u64).unwrap_or(0),
                esc(field(d, "license")),
                esc(field(d, "rights")),
                d.get("units").and_then(Value::as_u64).unwrap_or(0),
                esc(field(d, "channel")),
                esc(field(d, "rule")),
                if field(d, "reason") == field(d, "rule") {
                    String::new()
                } else {
                    format!(" · {}", esc(field(d, "reason")))
                },
                if d.get("shadow").and_then(Value::as_bool).unwrap_or(false) {
                    " (shadow)"
                } else {
                    ""
                },
                esc(field(d, "span_sha256")),
            );
        }
        page += "</table>";
    }
    page += "<p class=\"muted\">Policy versions are the SHA-256 of the policy file in force; the audit log format is documented in docs/audit-log.md.</p></body></html>\n";
    page
}
