//! Policy files: what compliance staff write to decide what happens to a reproduction.
//!
//! A policy is TOML (`proxy-config/policies/*.toml`), read raw and validated into a [`Policy`]
//! with every problem reported at once (file, line, key path). Vocabulary in the spirit of
//! cargo-deny: `[[rules]]` select findings and name an action, `[[exceptions]]` are scoped
//! overrides (a corpus, a tenant, a route), `[categories]` extends the license categories,
//! `shadow = true` decides and records without acting, `[[tests]]` are the policy's own cases.
//!
//! Precedence: the first matching exception decides; otherwise the most severe action of all
//! matching rules (block > redact > annotate > log > allow), the earlier rule on a tie;
//! otherwise `[defaults]`. Every decision names its rule and a stable kebab-case reason code.
//! This module owns deciding; it does not know about streams or wire formats.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml_edit::{Item, Table, Value};

use crate::diag::{Problem, Problems, Spanned, TomlReader};
use crate::proxy::pipeline::{Action, Rules};

/// License categories, from most to least permissive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    PublicDomain,
    Permissive,
    WeakCopyleft,
    Copyleft,
    /// Proprietary, unknown or `NOASSERTION`.
    Proprietary,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::PublicDomain,
        Category::Permissive,
        Category::WeakCopyleft,
        Category::Copyleft,
        Category::Proprietary,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Category::PublicDomain => "public-domain",
            Category::Permissive => "permissive",
            Category::WeakCopyleft => "weak-copyleft",
            Category::Copyleft => "copyleft",
            Category::Proprietary => "proprietary",
        }
    }
    fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Licenses dedicated to the public domain (SPDX metadata has no flag for it).
const PUBLIC_DOMAIN: &[&str] = &[
    "CC0-1.0",
    "Unlicense",
    "CC-PDDC",
    "PDDL-1.0",
    "WTFPL",
    "0BSD",
    "MIT-0",
];
/// File- or library-level copyleft (the `spdx` crate marks these copyleft too).
const WEAK_COPYLEFT_PREFIXES: &[&str] = &[
    "LGPL-", "MPL-", "EPL-", "CDDL-", "CPL-", "MS-RL", "APSL-", "ErlPL-",
];

fn base_category(name: &str, extra: &BTreeMap<String, Category>) -> Category {
    if let Some(c) = extra.get(name) {
        return *c;
    }
    if PUBLIC_DOMAIN.contains(&name) {
        return Category::PublicDomain;
    }
    let Some(id) = spdx::license_id(name) else {
        return Category::Proprietary;
    };
    if WEAK_COPYLEFT_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Category::WeakCopyleft
    } else if id.is_copyleft() {
        Category::Copyleft
    } else if id.is_osi_approved() || id.is_fsf_free_libre() {
        Category::Permissive
    } else {
        Category::Proprietary
    }
}

fn req_name(r: &spdx::LicenseReq) -> String {
    match &r.license {
        spdx::LicenseItem::Spdx { id, .. } => id.name.to_string(),
        spdx::LicenseItem::Other(o) => format!("LicenseRef-{}", o.lic_ref),
    }
}

fn lax(expr: &str) -> Option<spdx::Expression> {
    spdx::Expression::parse_mode(expr, spdx::ParseMode::LAX).ok()
}

/// The category of a license expression: the most permissive choice it allows (`MIT OR
/// GPL-2.0` is permissive; `MIT AND GPL-2.0` is copyleft). Unknown is proprietary.
pub fn category(expr: &str, extra: &BTreeMap<String, Category>) -> Category {
    let Some(e) = lax(expr).filter(|_| expr != "NOASSERTION") else {
        return Category::Proprietary;
    };
    Category::ALL
        .into_iter()
        .find(|&level| e.evaluate(|r| base_category(&req_name(r), extra) <= level))
        .unwrap_or(Category::Proprietary)
}

/// The license ids an expression mentions.
pub fn license_ids(expr: &str) -> Vec<String> {
    lax(expr)
        .map(|e| e.requirements().map(|r| req_name(&r.req)).collect())
        .unwrap_or_default()
}

/// What a policy decides on: the facts of one finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Facts {
    /// `exact`, `renamed`, `near`, `license-text`, `license-marker` or `caller-supplied`.
    pub kind: String,
    /// `prose` or `code`.
    pub source: String,
    pub rights: String,
    pub license: String,
    pub corpus: String,
    pub units: u32,
    /// The longest piece of the run copied word for word (token for token in code); `None`:
    /// the whole run (exact runs; a policy test that does not say).
    pub exact_units: Option<u32>,
    /// The longest stretch of the run without a gap, renamed identifiers counting as copied,
    /// of a renamed run only its shape not repeated within it ([`crate::matcher::Finding::aligned_units`]);
    /// `None`: the whole run.
    pub aligned_units: Option<u32>,
    pub chars: u64,
    pub similarity: f64,
    pub tenant: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
}

impl Facts {
    /// The facts a finding carries itself (not its source's rights, license or corpus, nor
    /// the request's scope).
    pub fn of_finding(f: &crate::matcher::Finding) -> Facts {
        Facts {
            kind: if f.caller_supplied {
                "caller-supplied".into()
            } else {
                f.kind.as_str().into()
            },
            source: f.channel.as_str().into(),
            units: f.units,
            exact_units: Some(f.longest),
            aligned_units: Some(f.aligned_units()),
            chars: f.output_end - f.output_start,
            similarity: f.similarity(),
            ..Facts::default()
        }
    }
}

const KINDS: &[&str] = &[
    "exact",
    "renamed",
    "near",
    "license-text",
    "license-marker",
    "caller-supplied",
];
const SOURCES: &[&str] = &["prose", "code"];
const RIGHTS: &[&str] = &["copyrighted", "licensed", "public-domain"];

/// Compiled globs that compare equal by their text.
#[derive(Debug, Clone)]
pub struct Globs {
    pub text: Vec<String>,
    pub set: globset::GlobSet,
}

impl PartialEq for Globs {
    fn eq(&self, other: &Globs) -> bool {
        self.text == other.text
    }
}

/// Which findings a rule or exception applies to; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct When {
    pub kind: Vec<String>,
    pub source: Vec<String>,
    pub rights: Vec<String>,
    pub license: Vec<String>,
    pub category: Vec<Category>,
    pub corpus: Vec<String>,
    pub tenant: Vec<String>,
    pub route: Vec<String>,
    pub model: Option<Globs>,
    pub min_units: Option<u32>,
    pub max_units: Option<u32>,
    pub min_exact_units: Option<u32>,
    pub min_aligned_units: Option<u32>,
    pub min_chars: Option<u64>,
    pub min_similarity: Option<f64>,
}

impl When {
    /// `None` if the facts match, else the first condition that fails (for `explain`).
    pub fn mismatch(&self, f: &Facts, extra: &BTreeMap<String, Category>) -> Option<String> {
        let list = |name: &str, want: &[String], got: &str| {
            (!want.is_empty() && !want.iter().any(|w| w == got))
                .then(|| format!("{name} `{got}` is not one of {want:?}"))
        };
        let opt = |name: &str, want: &[String], got: &Option<String>| match got {
            _ if want.is_empty() => None,
            Some(g) if want.iter().any(|w| w == g) => None,
            _ => Some(format!("{name} {got:?} is not one of {want:?}")),
        };
        list("kind", &self.kind, &f.kind)
            .or_else(|| list("source", &self.source, &f.source))
            .or_else(|| list("rights", &self.rights, &f.rights))
            .or_else(|| list("corpus", &self.corpus, &f.corpus))
            .or_else(|| opt("tenant", &self.tenant, &f.tenant))
            .or_else(|| opt("route", &self.route, &f.route))
            .or_else(|| {
                let ids = license_ids(&f.license);
                (!self.license.is_empty() && !ids.iter().any(|i| self.license.contains(i))).then(
                    || {
                        format!(
                            "license `{}` mentions none of {:?}",
                            f.license, self.license
                        )
                    },
                )
            })
            .or_else(|| {
                let c = category(&f.license, extra);
                (!self.category.is_empty() && !self.category.contains(&c)).then(|| {
                    format!(
                        "category `{}` is not one of {:?}",
                        c.as_str(),
                        self.category.iter().map(|c| c.as_str()).collect::<Vec<_>>()
                    )
                })
            })
            .or_else(|| match (&self.model, &f.model) {
                (None, _) => None,
                (Some(g), Some(m)) if g.set.is_match(m) => None,
                (Some(g), _) => Some(format!("model {:?} matches none of {:?}", f.model, g.text)),
            })
            .or_else(|| {
                self.min_units
                    .filter(|&m| f.units < m)
                    .map(|m| format!("{} units < min_units {m}", f.units))
            })
            .or_else(|| {
                self.max_units
                    .filter(|&m| f.units > m)
                    .map(|m| format!("{} units > max_units {m}", f.units))
            })
            .or_else(|| {
                let got = f.exact_units.unwrap_or(f.units);
                self.min_exact_units
                    .filter(|&m| got < m)
                    .map(|m| format!("longest exact piece {got} units < min_exact_units {m}"))
            })
            .or_else(|| {
                let got = f.aligned_units.unwrap_or(f.units);
                self.min_aligned_units.filter(|&m| got < m).map(|m| {
                    format!("longest stretch without a gap {got} units < min_aligned_units {m}")
                })
            })
            .or_else(|| {
                self.min_chars
                    .filter(|&m| f.chars < m)
                    .map(|m| format!("{} chars < min_chars {m}", f.chars))
            })
            .or_else(|| {
                self.min_similarity
                    .filter(|&m| f.similarity < m)
                    .map(|m| format!("similarity {} < {m}", f.similarity))
            })
    }
}

/// A rule or an exception.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub reason: String,
    pub description: Option<String>,
    pub when: When,
    /// Where it was written (line), for messages.
    pub line: usize,
}

/// A test case carried by the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub name: String,
    pub facts: Facts,
    pub expect: Action,
    pub rule: Option<String>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub shadow: bool,
    /// Characters of a decided span the audit trail may quote (`excerpts = N`); 0, the
    /// default, records only the span's SHA-256.
    pub excerpt_chars: usize,
    pub default_action: Action,
    pub default_reason: String,
    pub categories: BTreeMap<String, Category>,
    pub rules: Vec<Rule>,
    pub exceptions: Vec<Rule>,
    pub tests: Vec<TestCase>,
    /// Non-fatal findings about the policy (e.g. rules that can never match).
    pub lints: Vec<Problem>,
    /// SHA-256 of the file, recorded with every decision.
    pub hash: String,
}

/// A decision of the policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// What the policy says.
    pub action: Action,
    /// What is done: `log` instead of `action` when the policy is in shadow mode.
    pub effective: Action,
    pub rule: String,
    pub reason: String,
    pub shadow: bool,
}

impl Policy {
    /// The built-in policy (the config's `[rules]` with their defaults).
    pub fn builtin() -> Policy {
        Policy::from_rules(&Rules::default())
    }

    /// The policy the config's `[rules]` section describes: long runs get `long_action`, runs
    /// of at least t get `short_action`, caller-supplied runs `caller_supplied`; license texts
    /// are annotated, copyleft license markers annotated and other markers logged.
    pub fn from_rules(rules: &Rules) -> Policy {
        let by_kind = |name: &str, action: Action, kind: &str, category: &[Category]| Rule {
            name: name.into(),
            action,
            reason: name.into(),
            description: None,
            when: When {
                kind: vec![kind.into()],
                category: category.to_vec(),
                ..When::default()
            },
            line: 0,
        };
        let r = |name: &str, source: &str, min: u32| Rule {
            name: name.into(),
            action: rules.long_action,
            reason: name.into(),
            description: None,
            when: When {
                source: vec![source.into()],
                min_units: Some(min),
                // A renamed or lightly edited copy of a long run is as much a copy; a copy
                // with more of its words changed is reported (short_action), not blocked.
                kind: vec!["exact".into(), "renamed".into(), "near".into()],
                min_similarity: Some(rules.long_min_similarity),
                ..When::default()
            },
            line: 0,
        };
        // Code is blocked on a piece of it copied whole: token for token, or with names
        // renamed. Idioms of unrelated crates (getters, `Display` impls, serde forwarding)
        // share runs of 50–230 tokens at similarity 0.8–0.98 whose pieces are shorter; of
        // held-out crate files blocked without this, hand-labelled, most were such idioms
        // (docs/proxy.md, "What the built-in policy blocks in whole files").
        let mut exact_piece = r("long-code-run", "code", rules.long_code_units);
        exact_piece.when.min_exact_units = Some(rules.long_code_exact_units);
        let mut aligned_piece = r("long-code-run-aligned", "code", rules.long_code_units);
        aligned_piece.reason = "long-code-run".into();
        aligned_piece.when.min_aligned_units = Some(rules.long_code_aligned_units);
        Policy {
            name: "built-in".into(),
            shadow: false,
            default_action: rules.short_action,
            default_reason: "short-run".into(),
            categories: BTreeMap::new(),
            rules: vec![
                r("long-prose-run", "prose", rules.long_prose_units),
                exact_piece,
                aligned_piece,
                Rule {
                    name: "caller-supplied".into(),
                    action: rules.caller_supplied,
                    reason: "caller-supplied".into(),
                    description: None,
                    when: When {
                        kind: vec!["caller-supplied".into()],
                        ..When::default()
                    },
                    line: 0,
                },
                // A reproduced license text says which license the code around it is under:
                // cite it, do not stop it.
                by_kind("license-text", Action::Annotate, "license-text", &[]),
                // A license header or identifier of a copyleft license in generated code is
                // worth a note; other markers (permissive licenses, copyright lines) are logged.
                by_kind(
                    "license-marker-copyleft",
                    Action::Annotate,
                    "license-marker",
                    &[Category::Copyleft, Category::WeakCopyleft],
                ),
                by_kind("license-marker", Action::Log, "license-marker", &[]),
            ],
            exceptions: Vec::new(),
            tests: Vec::new(),
            lints: Vec::new(),
            hash: "built-in".into(),
            excerpt_chars: 0,
        }
    }

    /// Decides a finding.
    pub fn decide(&self, f: &Facts) -> Verdict {
        let verdict = |action: Action, rule: &str, reason: &str| Verdict {
            action,
            effective: if self.shadow { Action::Log } else { action },
            rule: rule.to_string(),
            reason: reason.to_string(),
            shadow: self.shadow,
        };
        if let Some(e) = self
            .exceptions
            .iter()
            .find(|e| e.when.mismatch(f, &self.categories).is_none())
        {
            return verdict(e.action, &e.name, &e.reason);
        }
        let mut best: Option<&Rule> = None;
        for r in &self.rules {
            if r.when.mismatch(f, &self.categories).is_none()
                && best.is_none_or(|b| r.action > b.action)
            {
                best = Some(r);
            }
        }
        match best {
            Some(r) => verdict(r.action, &r.name, &r.reason),
            None => verdict(self.default_action, "default", &self.default_reason),
        }
    }

    /// A license expression's category, with this policy's `[categories]`.
    pub fn category_of(&self, license: &str) -> Category {
        category(license, &self.categories)
    }

    /// The shortest run of `source` this policy could block, or `None` if it never blocks one
    /// (shadow mode, or no block rule, exception or default). Runs only grow, so the pipeline
    /// need not judge a still-growing run until it reaches this length.
    pub fn min_block_units(&self, source: &str) -> Option<u32> {
        if self.shadow {
            return None;
        }
        if self.default_action == Action::Block {
            return Some(0);
        }
        self.rules
            .iter()
            .chain(&self.exceptions)
            .filter(|r| r.action == Action::Block)
            .filter(|r| r.when.source.is_empty() || r.when.source.iter().any(|s| s == source))
            .map(|r| r.when.min_units.unwrap_or(0))
            .min()
    }

    /// Whether this policy could block a finding of `kind` (`license-text`, …): if not, the
    /// proxy need not hold such runs back.
    pub fn may_block_kind(&self, kind: &str) -> bool {
        self.may_take_kind(kind, &[Action::Block])
    }

    /// Whether this policy could block or redact a finding of `kind`: whether text that may
    /// become one must be held until it is decided.
    pub fn may_withhold_kind(&self, kind: &str) -> bool {
        self.may_take_kind(kind, &[Action::Block, Action::Redact])
    }

    /// Whether one of `actions` could be taken on a finding of `kind` (never in shadow mode).
    fn may_take_kind(&self, kind: &str, actions: &[Action]) -> bool {
        if self.shadow {
            return false;
        }
        actions.contains(&self.default_action)
            || self
                .rules
                .iter()
                .chain(&self.exceptions)
                .filter(|r| actions.contains(&r.action))
                .any(|r| r.when.kind.is_empty() || r.when.kind.iter().any(|k| k == kind))
    }

    /// Runs the policy's own test cases: (case, verdict, passed).
    pub fn run_tests(&self) -> Vec<(&TestCase, Verdict, bool)> {
        self.tests
            .iter()
            .map(|t| {
                let v = self.decide(&t.facts);
                let ok = v.action == t.expect && t.rule.as_ref().is_none_or(|r| *r == v.rule);
                (t, v, ok)
            })
            .collect()
    }

    /// Loads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(path, src).map_err(PolicyError::Invalid)
    }

    /// Checks the policy against the indexes it will run with: known corpus names, and no
    /// threshold below an index's guarantee `t` (runs shorter than t are never reported).
    pub fn check_against(
        &self,
        path: &Path,
        indexes: &[std::sync::Arc<crate::index::Index>],
    ) -> Problems {
        let mut p = Problems::default();
        if indexes.is_empty() {
            return p;
        }
        let corpora: Vec<&str> = indexes
            .iter()
            .flat_map(|i| i.manifest().corpora.iter().map(|c| c.name.as_str()))
            .collect();
        for r in self.rules.iter().chain(&self.exceptions) {
            for c in &r.when.corpus {
                if !corpora.contains(&c.as_str()) {
                    p.0.push(Problem {
                        file: path.into(),
                        line: r.line,
                        column: 1,
                        key: format!("{}.when.corpus", r.name),
                        message: format!("no index has a corpus named `{c}`"),
                    });
                }
            }
            if let Some(m) = r.when.min_units {
                for ix in indexes {
                    let params = ix.params();
                    for (src, t) in [("prose", params.prose.t()), ("code", params.code.t())] {
                        let applies =
                            r.when.source.is_empty() || r.when.source.iter().any(|s| s == src);
                        if applies && m > 0 && m < t {
                            p.0.push(Problem { file: path.into(), line: r.line, column: 1, key: format!("{}.when.min_units", r.name),
                                message: format!("{m} is below the guarantee t = {t} of {src} in index {}: shorter runs are never reported", ix.manifest().index_id) });
                        }
                    }
                }
            }
        }
        p
    }
}

/// Why a policy could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Problems),
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// The tables of an array of tables (or of an inline-table array), with a problem otherwise.
fn tables(r: &mut TomlReader, t: &Table, key: &str) -> Vec<Table> {
    match t.get(key) {
        None => Vec::new(),
        Some(Item::ArrayOfTables(a)) => a.iter().cloned().collect(),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .filter_map(|v| match v {
                Value::InlineTable(it) => Some(it.clone().into_table()),
                other => {
                    r.problem(other.span(), key, "expected tables");
                    None
                }
            })
            .collect(),
        Some(other) => {
            r.problem(
                other.span(),
                key,
                format!("expected an array of tables (`[[{key}]]`)"),
            );
            Vec::new()
        }
    }
}

fn sub_table(r: &mut TomlReader, t: &Table, prefix: &str, key: &str) -> Option<Table> {
    match t.get(key)? {
        Item::Table(x) => Some(x.clone()),
        Item::Value(Value::InlineTable(x)) => Some(x.clone().into_table()),
        other => {
            r.problem(other.span(), &format!("{prefix}.{key}"), "expected a table");
            None
        }
    }
}

fn action(r: &mut TomlReader, v: Spanned<String>, key: &str) -> Option<Action> {
    match Action::parse(&v.value) {
        Some(a) => Some(a),
        None => {
            r.problem(v.span, key, Action::unknown(&v.value));
            None
        }
    }
}

fn one_of(r: &mut TomlReader, t: &Table, prefix: &str, key: &str, allowed: &[&str]) -> Vec<String> {
    let Some(list) = r.opt_str_list(t, prefix, key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        if allowed.is_empty() || allowed.contains(&v.value.as_str()) {
            out.push(v.value);
        } else {
            r.problem(
                v.span,
                &format!("{prefix}.{key}[{i}]"),
                format!(
                    "`{}` is not one of {}",
                    v.value,
                    allowed
                        .iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    out
}

const WHEN_KEYS: &[&str] = &[
    "kind",
    "source",
    "rights",
    "license",
    "category",
    "corpus",
    "tenant",
    "route",
    "model",
    "min_units",
    "max_units",
    "min_exact_units",
    "min_aligned_units",
    "min_chars",
    "min_similarity",
];

fn parse_when(r: &mut TomlReader, t: &Table, prefix: &str) -> When {
    r.unknown_keys(t, prefix, WHEN_KEYS);
    let mut w = When {
        kind: one_of(r, t, prefix, "kind", KINDS),
        source: one_of(r, t, prefix, "source", SOURCES),
        rights: one_of(r, t, prefix, "rights", RIGHTS),
        corpus: one_of(r, t, prefix, "corpus", &[]),
        tenant: one_of(r, t, prefix, "tenant", &[]),
        route: one_of(
            r,
            t,
            prefix,
            "route",
            &["chat-completions", "completions", "responses", "messages"],
        ),
        ..When::default()
    };
    for (i, l) in r
        .opt_str_list(t, prefix, "license")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let known = l.value.starts_with("LicenseRef-") || spdx::license_id(&l.value).is_some();
        if known {
            w.license.push(l.value);
        } else {
            r.problem(
                l.span,
                &format!("{prefix}.license[{i}]"),
                format!(
                    "`{}` is not an SPDX license identifier (or LicenseRef-…)",
                    l.value
                ),
            );
        }
    }
    for (i, c) in r
        .opt_str_list(t, prefix, "category")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match Category::parse(&c.value) {
            Some(cat) => w.category.push(cat),
            None => r.problem(c.span, &format!("{prefix}.category[{i}]"), format!("`{}` is not one of `public-domain`, `permissive`, `weak-copyleft`, `copyleft`, `proprietary`", c.value)),
        }
    }
    if let Some(globs) = r.opt_str_list(t, prefix, "model") {
        let mut b = globset::GlobSetBuilder::new();
        let mut text = Vec::new();
        for (i, g) in globs.into_iter().enumerate() {
            match globset::Glob::new(&g.value) {
                Ok(x) => {
                    b.add(x);
                    text.push(g.value);
                }
                Err(e) => r.problem(
                    g.span,
                    &format!("{prefix}.model[{i}]"),
                    format!("invalid glob: {}", e.kind()),
                ),
            }
        }
        w.model = b.build().ok().map(|set| Globs { text, set });
    }
    let mut units = |key: &str| {
        r.opt_u64(t, prefix, key)
            .map(|v| v.value.min(u32::MAX as u64) as u32)
    };
    w.min_units = units("min_units");
    w.max_units = units("max_units");
    w.min_exact_units = units("min_exact_units");
    w.min_aligned_units = units("min_aligned_units");
    w.min_chars = r.opt_u64(t, prefix, "min_chars").map(|v| v.value);
    w.min_similarity = r.opt_fraction(t, prefix, "min_similarity").map(|v| v.value);
    w
}

impl Policy {
    pub fn parse(path: &Path, src: String) -> Result<Policy, Problems> {
        let hash = crate::audit::sha256_hex(src.as_bytes());
        let text = src.clone();
        let (mut r, doc) = TomlReader::parse(path, src);
        let Some(doc) = doc else {
            return Err(r.problems);
        };
        let t = doc.as_table();
        r.unknown_keys(
            t,
            "",
            &[
                "version",
                "name",
                "shadow",
                "excerpts",
                "defaults",
                "categories",
                "rules",
                "exceptions",
                "tests",
            ],
        );
        let line = |off: usize| text[..off.min(text.len())].matches('\n').count() + 1;
        match t.get("version").and_then(Item::as_integer) {
            Some(1) => {}
            Some(v) => r.problem(
                t.get("version").and_then(Item::span),
                "version",
                format!(
                    "policy format version {v} is not supported (this verbatim reads version 1)"
                ),
            ),
            None => r.problem(None, "version", "missing `version = 1`"),
        }
        let name = r
            .opt_str(t, "", "name")
            .map(|s| s.value)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let shadow = match t.get("shadow") {
            None => false,
            Some(i) => i.as_bool().unwrap_or_else(|| {
                r.problem(i.span(), "shadow", "expected true or false");
                false
            }),
        };
        let excerpt_chars = match r.opt_u64(t, "", "excerpts") {
            Some(v) if v.value > 10_000 => {
                r.problem(v.span, "excerpts", "at most 10000 characters");
                0
            }
            Some(v) => v.value as usize,
            None => 0,
        };
        let mut p = Policy {
            name,
            shadow,
            excerpt_chars,
            default_action: Action::Log,
            default_reason: "unmatched".into(),
            categories: BTreeMap::new(),
            rules: Vec::new(),
            exceptions: Vec::new(),
            tests: Vec::new(),
            lints: Vec::new(),
            hash,
        };
        if let Some(d) = r.opt_std_table(t, "", "defaults") {
            r.unknown_keys(d, "defaults", &["action", "reason"]);
            if let Some(a) = r
                .opt_str(d, "defaults", "action")
                .and_then(|v| action(&mut r, v, "defaults.action"))
            {
                p.default_action = a;
            }
            if let Some(reason) = r.opt_str(d, "defaults", "reason") {
                if is_kebab(&reason.value) {
                    p.default_reason = reason.value;
                } else {
                    r.problem(
                        reason.span,
                        "defaults.reason",
                        "a reason code is kebab-case (`long-code-run`)",
                    );
                }
            }
        }
        if let Some(c) = r.opt_std_table(t, "", "categories") {
            for (key, _) in c.iter() {
                let Some(cat) = Category::parse(key) else {
                    r.problem(c.key(key).and_then(|k| k.span()), &format!("categories.{key}"), "not a category (`public-domain`, `permissive`, `weak-copyleft`, `copyleft`, `proprietary`)");
                    continue;
                };
                for l in r.opt_str_list(c, "categories", key).unwrap_or_default() {
                    p.categories.insert(l.value, cat);
                }
            }
        }
        let mut names: Vec<String> = Vec::new();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        for (section, is_exception) in [("rules", false), ("exceptions", true)] {
            for (i, rt) in tables(&mut r, t, section).iter().enumerate() {
                let prefix = format!("{section}[{i}]");
                r.unknown_keys(
                    rt,
                    &prefix,
                    &["name", "action", "reason", "description", "when"],
                );
                let rline = line(
                    rt.span()
                        .or_else(|| rt.iter().next().and_then(|(_, v)| v.span()))
                        .map(|s| s.start)
                        .unwrap_or(0),
                );
                let Some(name) = r.req_str(rt, &prefix, "name") else {
                    continue;
                };
                if !is_kebab(&name.value) {
                    r.problem(
                        name.span.clone(),
                        &format!("{prefix}.name"),
                        "a rule name is kebab-case (`block-copyleft-code`)",
                    );
                }
                if names.contains(&name.value) {
                    r.problem(
                        name.span.clone(),
                        &format!("{prefix}.name"),
                        format!("`{}` names another rule too", name.value),
                    );
                }
                names.push(name.value.clone());
                let act = r
                    .req_str(rt, &prefix, "action")
                    .and_then(|v| action(&mut r, v, &format!("{prefix}.action")));
                let written = r.opt_str(rt, &prefix, "reason");
                if let Some(w) = written.as_ref().filter(|w| !is_kebab(&w.value)) {
                    r.problem(
                        w.span.clone(),
                        &format!("{prefix}.reason"),
                        "a reason code is kebab-case (`long-code-run`)",
                    );
                }
                let reason = written
                    .map(|s| s.value)
                    .unwrap_or_else(|| name.value.clone());
                if let Some(prev) = reasons.insert(reason.clone(), name.value.clone()) {
                    r.problem(rt.get("reason").and_then(Item::span).or(name.span.clone()), &format!("{prefix}.reason"), format!("reason code `{reason}` is also used by `{prev}`; reason codes are unique"));
                }
                let description = r.opt_str(rt, &prefix, "description").map(|s| s.value);
                let when = match sub_table(&mut r, rt, &prefix, "when") {
                    Some(w) => parse_when(&mut r, &w, &format!("{prefix}.when")),
                    None => When::default(),
                };
                if is_exception
                    && when.corpus.is_empty()
                    && when.tenant.is_empty()
                    && when.route.is_empty()
                {
                    r.problem(
                        name.span.clone(),
                        &prefix,
                        "an exception is scoped: give `when.corpus`, `when.tenant` or `when.route`",
                    );
                }
                let rule = Rule {
                    name: name.value,
                    action: act.unwrap_or(Action::Log),
                    reason,
                    description,
                    when,
                    line: rline,
                };
                if let (Some(a), Some(b)) = (rule.when.min_units, rule.when.max_units)
                    && a > b
                {
                    p.lints.push(Problem {
                        file: path.into(),
                        line: rline,
                        column: 1,
                        key: format!("{prefix}.when"),
                        message: format!(
                            "rule `{}` can never match: min_units {a} > max_units {b}",
                            rule.name
                        ),
                    });
                }
                if !rule.when.license.is_empty() && !rule.when.category.is_empty() {
                    let fits = rule.when.license.iter().any(|l| {
                        rule.when
                            .category
                            .contains(&base_category(l, &p.categories))
                    });
                    if !fits {
                        p.lints.push(Problem { file: path.into(), line: rline, column: 1, key: format!("{prefix}.when"), message: format!("rule `{}` can never match: none of its licenses is in its categories", rule.name) });
                    }
                }
                if is_exception {
                    p.exceptions.push(rule);
                } else {
                    if let Some(prev) = p
                        .rules
                        .iter()
                        .find(|x| x.when == rule.when && x.action != rule.action)
                    {
                        let span = rt.get("when").and_then(Item::span).or(name.span.clone());
                        r.problem(
                            span,
                            &format!("{prefix}.when"),
                            format!(
                                "contradicts `{}`: same conditions, different action",
                                prev.name
                            ),
                        );
                    }
                    p.rules.push(rule);
                }
            }
        }
        for (i, tt) in tables(&mut r, t, "tests").iter().enumerate() {
            let prefix = format!("tests[{i}]");
            r.unknown_keys(tt, &prefix, &["name", "finding", "expect", "rule"]);
            let name = r
                .req_str(tt, &prefix, "name")
                .map(|s| s.value)
                .unwrap_or_default();
            let expect = r
                .req_str(tt, &prefix, "expect")
                .and_then(|v| action(&mut r, v, &format!("{prefix}.expect")));
            let rule = r.opt_str(tt, &prefix, "rule").map(|s| s.value);
            if let Some(rn) = &rule
                && rn != "default"
                && !names.contains(rn)
            {
                r.problem(
                    tt.get("rule").and_then(Item::span),
                    &format!("{prefix}.rule"),
                    format!("no rule is named `{rn}`"),
                );
            }
            let facts = match sub_table(&mut r, tt, &prefix, "finding") {
                None => {
                    r.problem(
                        tt.span(),
                        &format!("{prefix}.finding"),
                        "missing required key",
                    );
                    None
                }
                Some(ft) => {
                    let s = toml_edit::DocumentMut::from(ft.clone()).to_string();
                    match toml_edit::de::from_str::<Facts>(&s) {
                        Ok(mut f) => {
                            if f.similarity == 0.0 {
                                f.similarity = 1.0;
                            }
                            if f.kind.is_empty() {
                                f.kind = "exact".into();
                            }
                            Some(f)
                        }
                        Err(e) => {
                            r.problem(
                                tt.get("finding").and_then(Item::span),
                                &format!("{prefix}.finding"),
                                e.message().trim().to_string(),
                            );
                            None
                        }
                    }
                }
            };
            if let (Some(expect), Some(facts)) = (expect, facts) {
                p.tests.push(TestCase {
                    name,
                    facts,
                    expect,
                    rule,
                });
            }
        }
        if r.problems.is_empty() {
            Ok(p)
        } else {
            r.problems.sort();
            Err(r.problems)
        }
    }
}
