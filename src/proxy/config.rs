//! The proxy's configuration (`proxy-config/verbatim.toml`): read raw, validated into
//! [`Config`] with every problem reported at once (file, line, key). Command-line flags
//! override the file; with neither, the built-in defaults apply.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::diag::{Problems, TomlReader};
use crate::proxy::pipeline::{Action, Hold, Rules};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream_openai: http::Uri,
    pub upstream_anthropic: http::Uri,
    /// Which HTTP version the upstream connections speak (`upstream.http2`).
    pub upstream_http2: UpstreamHttp2,
    /// Certificates (PEM) to trust for TLS upstreams besides the bundled Mozilla roots
    /// (`upstream.ca_file`, relative to the config file).
    pub upstream_ca_file: Option<PathBuf>,
    /// Requests in flight on one HTTP/2 upstream connection before another is opened
    /// (`upstream.http2_max_streams`; see [`UpstreamHttp2`]).
    pub upstream_http2_max_streams: usize,
    pub indexes: Vec<PathBuf>,
    pub hold: Hold,
    pub rules: Rules,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub max_event_bytes: usize,
    /// Bytes of upstream events a stream may hold back waiting for a decision; past it the
    /// stream is stopped (fail-closed: nothing undecided is released).
    pub max_holdback_bytes: usize,
    /// JSON Lines audit trail (see `docs/audit-log.md`); none if unset.
    pub audit_log: Option<PathBuf>,
    /// How the audit trail is written (`[audit]`).
    pub audit: crate::audit::AuditOptions,
    /// A request header whose value names the tenant (for policies and the audit trail);
    /// without one, or when a request lacks it, the tenant is a hash of the API key.
    pub tenant_header: Option<http::HeaderName>,
    /// Scan against the built-in SPDX license index too (`verbatim serve` adds it).
    pub license_index: bool,
    /// Read the indexes' mapped files into the page cache at start (in the background,
    /// `/readyz` answering 503 until done) and before a reload swaps new ones in, so that no
    /// lookup waits on the disk with a worker's streams behind it ([`crate::index::Index::warm`]).
    pub warm_indexes: bool,
    /// Upstream timeouts (`[timeouts]`).
    pub timeouts: Timeouts,
    /// Policy file; without one, `rules` describes the built-in policy.
    pub policy: Option<PathBuf>,
    /// A second listener for `/metrics`, `/healthz`, `/readyz` and `POST /admin/reload`; off
    /// unless set.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream_openai: http::Uri::from_static("https://api.openai.com"),
            upstream_anthropic: http::Uri::from_static("https://api.anthropic.com"),
            upstream_http2: UpstreamHttp2::Negotiate,
            upstream_http2_max_streams: 100,
            upstream_ca_file: None,
            indexes: Vec::new(),
            hold: Hold::Strict,
            rules: Rules::default(),
            max_request_bytes: 32 << 20,
            max_response_bytes: 64 << 20,
            max_event_bytes: 1 << 20,
            max_holdback_bytes: 8 << 20,
            audit_log: None,
            audit: Default::default(),
            tenant_header: None,
            license_index: true,
            warm_indexes: true,
            timeouts: Timeouts::default(),
            policy: None,
            admin_listen: None,
        }
    }
}

/// How long Verbatim waits on the upstream before giving up on a request, and on a client
/// for its request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake start).
    pub connect: std::time::Duration,
    /// From sending the request to the response head (a non-streamed completion arrives
    /// whole, so this is also how long a model may think before answering).
    pub first_byte: std::time::Duration,
    /// Silence allowed between two pieces of a scanned response body (and the whole of a
    /// non-streamed scanned body).
    pub idle: std::time::Duration,
    /// From a client connection's start, or the end of its last response, to the end of its
    /// next request head (HTTP/1.1; for the first bytes only, HTTP/2): a client that connects
    /// and sends nothing, or a head slowly, does not hold a connection for ever.
    pub client_header: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: std::time::Duration::from_secs(10),
            first_byte: std::time::Duration::from_secs(600),
            idle: std::time::Duration::from_secs(300),
            client_header: std::time::Duration::from_secs(30),
        }
    }
}

/// Whether Verbatim speaks HTTP/2 to the upstream.
///
/// Over HTTP/2 the requests to one upstream share a connection, and the upstream caps the
/// streams a connection may carry at once (`SETTINGS_MAX_CONCURRENT_STREAMS`; RFC 9113 asks
/// for at least 100). hyper's client opens no second connection when the cap is reached
/// (hyperium/hyper#2197, #3623) but queues the request until a stream ends — and a model's
/// streamed answer lasts seconds to minutes. So Verbatim opens another connection once one
/// carries `upstream.http2_max_streams` requests (100 by default); an upstream with a lower cap
/// needs that lowered. An idle stream costs about half the memory over HTTP/2, and relaying
/// costs less CPU (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamHttp2 {
    /// HTTP/1.1 only (TLS offers no ALPN protocol, so the upstream speaks HTTP/1.1).
    Never,
    /// HTTP/2 where a TLS upstream chooses it by ALPN; HTTP/1.1 otherwise (the default).
    Negotiate,
    /// HTTP/2 always, also without TLS (h2c with prior knowledge).
    PriorKnowledge,
}

impl UpstreamHttp2 {
    /// The config's and the flag's names, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["never", "negotiate", "prior-knowledge"];

    pub fn parse(s: &str) -> Option<UpstreamHttp2> {
        match s {
            "never" => Some(UpstreamHttp2::Never),
            "negotiate" => Some(UpstreamHttp2::Negotiate),
            "prior-knowledge" => Some(UpstreamHttp2::PriorKnowledge),
            _ => None,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Problems),
}

/// Checks an upstream base URL: http or https, with a host.
pub fn parse_upstream(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(uri)
}

const TOP: &[&str] = &[
    "listen",
    "indexes",
    "hold",
    "policy",
    "admin_listen",
    "audit_log",
    "audit",
    "tenant_header",
    "license_index",
    "warm_indexes",
    "timeouts",
    "upstream",
    "rules",
    "limits",
];

impl Config {
    /// Reads and validates a config file; relative index paths are relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, src).map_err(ConfigError::Invalid)
    }

    pub fn parse(path: &Path, src: String) -> Result<Config, Problems> {
        let (mut r, doc) = TomlReader::parse(path, src);
        let Some(doc) = doc else {
            return Err(r.problems);
        };
        let t = doc.as_table();
        let mut c = Config::default();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        r.unknown_keys(t, "", TOP);
        if let Some(l) = r.opt_str(t, "", "listen") {
            match l.value.parse() {
                Ok(a) => c.listen = a,
                Err(_) => r.problem(
                    l.span,
                    "listen",
                    format!("`{}` is not an address:port", l.value),
                ),
            }
        }
        if let Some(list) = r.opt_str_list(t, "", "indexes") {
            c.indexes = list.into_iter().map(|s| base.join(s.value)).collect();
        }
        if let Some(a) = r.opt_str(t, "", "admin_listen") {
            match a.value.parse() {
                Ok(x) => c.admin_listen = Some(x),
                Err(_) => r.problem(
                    a.span,
                    "admin_listen",
                    format!("`{}` is not an address:port", a.value),
                ),
            }
        }
        if let Some(p) = r.opt_str(t, "", "policy") {
            c.policy = Some(base.join(p.value));
        }
        if let Some(a) = r.opt_str(t, "", "audit_log") {
            c.audit_log = Some(base.join(a.value));
        }
        if let Some(tt) = r.opt_std_table(t, "", "timeouts") {
            r.unknown_keys(
                tt,
                "timeouts",
                &["connect_ms", "first_byte_ms", "idle_ms", "client_header_ms"],
            );
            for (key, slot) in [
                ("connect_ms", &mut c.timeouts.connect),
                ("first_byte_ms", &mut c.timeouts.first_byte),
                ("idle_ms", &mut c.timeouts.idle),
                ("client_header_ms", &mut c.timeouts.client_header),
            ] {
                if let Some(v) = r.opt_u64(tt, "timeouts", key) {
                    if v.value == 0 {
                        r.problem(v.span, &format!("timeouts.{key}"), "must be at least 1 ms");
                    } else {
                        *slot = std::time::Duration::from_millis(v.value);
                    }
                }
            }
        }
        if let Some(b) = r.opt_bool(t, "", "license_index") {
            c.license_index = b.value;
        }
        if let Some(b) = r.opt_bool(t, "", "warm_indexes") {
            c.warm_indexes = b.value;
        }
        if let Some(h) = r.opt_str(t, "", "tenant_header") {
            match http::HeaderName::from_bytes(h.value.as_bytes()) {
                Ok(n)
                    if !matches!(
                        n.as_str(),
                        "authorization" | "x-api-key" | "api-key" | "cookie"
                    ) =>
                {
                    c.tenant_header = Some(n)
                }
                Ok(_) => r.problem(
                    h.span,
                    "tenant_header",
                    "a credential header cannot name the tenant: its value would reach the audit trail",
                ),
                Err(_) => r.problem(
                    h.span,
                    "tenant_header",
                    format!("`{}` is not a header name", h.value),
                ),
            }
        }
        if let Some(a) = r.opt_std_table(t, "", "audit") {
            r.unknown_keys(
                a,
                "audit",
                &["path", "durable", "on_failure", "rotate_bytes", "keep"],
            );
            if let Some(p) = r.opt_str(a, "audit", "path") {
                if c.audit_log.is_some() {
                    r.problem(
                        p.span,
                        "audit.path",
                        "give the audit log's path once: `audit_log` or `audit.path`",
                    );
                }
                c.audit_log = Some(base.join(p.value));
            }
            if let Some(d) = r.opt_bool(a, "audit", "durable") {
                c.audit.durable = d.value;
            }
            if let Some(f) = r.opt_str(a, "audit", "on_failure") {
                match crate::audit::OnFailure::parse(&f.value) {
                    Some(x) => c.audit.on_failure = x,
                    None => r.problem(
                        f.span,
                        "audit.on_failure",
                        format!("`{}` is not one of `fail-open`, `fail-closed`", f.value),
                    ),
                }
            }
            if let Some(v) = r.opt_u64(a, "audit", "rotate_bytes") {
                if v.value < 4096 {
                    r.problem(v.span, "audit.rotate_bytes", "must be at least 4096 bytes");
                } else {
                    c.audit.rotate_bytes = Some(v.value);
                }
            }
            if let Some(v) = r.opt_u64(a, "audit", "keep") {
                if v.value == 0 || v.value > 1000 {
                    r.problem(v.span, "audit.keep", "must be between 1 and 1000");
                } else {
                    c.audit.keep = v.value as u32;
                }
            }
        }
        if let Some(h) = r.opt_str(t, "", "hold") {
            match h.value.as_str() {
                "strict" => c.hold = Hold::Strict,
                "none" => c.hold = Hold::None,
                other => r.problem(
                    h.span,
                    "hold",
                    format!("`{other}` is not one of `strict`, `none`"),
                ),
            }
        }
        if let Some(u) = r.opt_std_table(t, "", "upstream") {
            r.unknown_keys(
                u,
                "upstream",
                &[
                    "openai",
                    "anthropic",
                    "http2",
                    "http2_max_streams",
                    "ca_file",
                ],
            );
            if let Some(v) = r.opt_str(u, "upstream", "ca_file") {
                c.upstream_ca_file = Some(base.join(v.value));
            }
            if let Some(v) = r.opt_u64(u, "upstream", "http2_max_streams") {
                let most = crate::proxy::server::H2_MAX_STREAMS;
                if v.value == 0 || v.value > most as u64 {
                    r.problem(
                        v.span,
                        "upstream.http2_max_streams",
                        format!("must be between 1 and {most}"),
                    );
                } else {
                    c.upstream_http2_max_streams = v.value as usize;
                }
            }
            if let Some(v) = r.opt_str(u, "upstream", "http2") {
                match UpstreamHttp2::parse(&v.value) {
                    Some(h) => c.upstream_http2 = h,
                    None => r.problem(
                        v.span,
                        "upstream.http2",
                        format!(
                            "`{}` is not one of `{}`",
                            v.value,
                            UpstreamHttp2::NAMES.join("`, `")
                        ),
                    ),
                }
            }
            for (key, slot) in [
                ("openai", &mut c.upstream_openai),
                ("anthropic", &mut c.upstream_anthropic),
            ] {
                if let Some(v) = r.opt_str(u, "upstream", key) {
                    match parse_upstream(&v.value) {
                        Ok(uri) => *slot = uri,
                        Err(e) => r.problem(v.span, &format!("upstream.{key}"), e),
                    }
                }
            }
        }
        if let Some(rt) = r.opt_std_table(t, "", "rules") {
            r.unknown_keys(
                rt,
                "rules",
                &[
                    "long_prose_units",
                    "long_code_units",
                    "long_code_exact_units",
                    "long_code_aligned_units",
                    "long_min_similarity",
                    "long_action",
                    "short_action",
                    "caller_supplied",
                ],
            );
            if let Some(v) = r.opt_u64(rt, "rules", "long_prose_units") {
                c.rules.long_prose_units = v.value.min(u32::MAX as u64) as u32;
            }
            for (key, slot) in [
                ("long_code_units", &mut c.rules.long_code_units),
                ("long_code_exact_units", &mut c.rules.long_code_exact_units),
                (
                    "long_code_aligned_units",
                    &mut c.rules.long_code_aligned_units,
                ),
            ] {
                if let Some(v) = r.opt_u64(rt, "rules", key) {
                    *slot = v.value.min(u32::MAX as u64) as u32;
                }
            }
            if let Some(v) = r.opt_fraction(rt, "rules", "long_min_similarity") {
                c.rules.long_min_similarity = v.value;
            }
            for (key, slot) in [
                ("long_action", &mut c.rules.long_action),
                ("short_action", &mut c.rules.short_action),
                ("caller_supplied", &mut c.rules.caller_supplied),
            ] {
                if let Some(v) = r.opt_str(rt, "rules", key) {
                    match Action::parse(&v.value) {
                        Some(a) => *slot = a,
                        None => {
                            r.problem(v.span, &format!("rules.{key}"), Action::unknown(&v.value))
                        }
                    }
                }
            }
        }
        if let Some(lt) = r.opt_std_table(t, "", "limits") {
            r.unknown_keys(
                lt,
                "limits",
                &[
                    "max_request_bytes",
                    "max_response_bytes",
                    "max_event_bytes",
                    "max_holdback_bytes",
                ],
            );
            for (key, slot) in [
                ("max_request_bytes", &mut c.max_request_bytes),
                ("max_response_bytes", &mut c.max_response_bytes),
                ("max_event_bytes", &mut c.max_event_bytes),
                ("max_holdback_bytes", &mut c.max_holdback_bytes),
            ] {
                if let Some(v) = r.opt_u64(lt, "limits", key) {
                    if v.value < 1024 {
                        r.problem(
                            v.span,
                            &format!("limits.{key}"),
                            "must be at least 1024 bytes",
                        );
                    } else {
                        *slot = v.value as usize;
                    }
                }
            }
        }
        if r.problems.is_empty() {
            Ok(c)
        } else {
            r.problems.sort();
            Err(r.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shipped_config_is_valid_and_states_the_defaults() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proxy-config/verbatim.toml"
        ));
        let c = Config::load(path).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.hold, d.hold);
        assert_eq!(c.audit.durable, d.audit.durable);
        assert_eq!(c.audit.on_failure, d.audit.on_failure);
        assert_eq!(c.audit.keep, d.audit.keep);
        assert_eq!(c.max_event_bytes, d.max_event_bytes);
        assert_eq!(c.max_holdback_bytes, d.max_holdback_bytes);
        assert_eq!(c.timeouts, d.timeouts);
        assert_eq!(c.rules, d.rules);
        assert_eq!(c.upstream_http2, d.upstream_http2);
        assert_eq!(c.upstream_http2_max_streams, d.upstream_http2_max_streams);
        assert_eq!(c.warm_indexes, d.warm_indexes);
        assert!(c.audit_log.is_none() && c.tenant_header.is_none());
    }

    #[test]
    fn the_upstream_http_version_is_read_and_checked() {
        assert_eq!(Config::default().upstream_http2, UpstreamHttp2::Negotiate);
        // The names the flag offers and the error lists are the names `parse` reads.
        for n in UpstreamHttp2::NAMES {
            assert!(UpstreamHttp2::parse(n).is_some(), "{n}");
        }
        for (v, want) in [
            ("never", UpstreamHttp2::Never),
            ("negotiate", UpstreamHttp2::Negotiate),
            ("prior-knowledge", UpstreamHttp2::PriorKnowledge),
        ] {
            let src = format!("[upstream]\nhttp2 = \"{v}\"\nhttp2_max_streams = 7\n");
            let c = Config::parse(Path::new("v.toml"), src).unwrap();
            assert_eq!(c.upstream_http2, want);
            assert_eq!(c.upstream_http2_max_streams, 7);
        }
        let c = Config::parse(
            Path::new("conf/v.toml"),
            "[upstream]\nca_file = \"ca.pem\"\n".into(),
        )
        .unwrap();
        assert_eq!(c.upstream_ca_file, Some(PathBuf::from("conf/ca.pem")));
        assert_problems(
            "[upstream]\nopenai = \"ftp://x\"\nhttp2 = \"sometimes\"\nhttp2_max_streams = 0\n",
            &[
                "v.toml:2",
                "upstream.openai",
                "v.toml:3",
                "upstream.http2",
                "v.toml:4",
                "upstream.http2_max_streams",
                "`sometimes` is not one of `never`, `negotiate`, `prior-knowledge`",
                "must be between 1 and 32768",
            ],
        );
        assert_problems(
            "[upstream]\nhttp2_max_streams = 32769\n",
            &[
                "v.toml:2",
                "upstream.http2_max_streams",
                "must be between 1 and 32768",
            ],
        );
    }

    #[test]
    fn rules_are_read_and_checked() {
        let src = "[rules]\nlong_prose_units = 40\nlong_min_similarity = 0.9\nlong_code_exact_units = 30\nlong_code_aligned_units = 60\n";
        let c = Config::parse(Path::new("v.toml"), src.into()).unwrap();
        assert_eq!(c.rules.long_prose_units, 40);
        assert_eq!(c.rules.long_code_exact_units, 30);
        assert_eq!(c.rules.long_code_aligned_units, 60);
        assert_eq!(c.rules.long_min_similarity, 0.9);
        assert_problems(
            "[rules]\nlong_min_similarity = 1.5\nlong_action = \"shred\"\n",
            &[
                "v.toml:2",
                "rules.long_min_similarity",
                "between 0 and 1",
                "v.toml:3",
                "rules.long_action",
            ],
        );
    }

    /// `src` does not parse, and its error message names every one of `want`.
    fn assert_problems(src: &str, want: &[&str]) {
        let e = Config::parse(Path::new("v.toml"), src.into())
            .unwrap_err()
            .to_string();
        for w in want {
            assert!(e.contains(w), "missing {w:?} in:\n{e}");
        }
    }

    #[test]
    fn warming_the_indexes_can_be_turned_off_and_takes_only_a_boolean() {
        let c = Config::parse(Path::new("v.toml"), "warm_indexes = false\n".into()).unwrap();
        assert!(!c.warm_indexes && Config::default().warm_indexes);
        assert_problems(
            "listen = \"nowhere\"\nwarm_indexes = \"no\"\n",
            &["v.toml:1", "v.toml:2", "warm_indexes"],
        );
    }

    #[test]
    fn no_credential_header_can_name_the_tenant() {
        for h in ["Authorization", "x-api-key", "api-key", "Cookie"] {
            assert_problems(&format!("tenant_header = \"{h}\"\n"), &["tenant_header"]);
        }
    }

    #[test]
    fn every_audit_and_tenant_problem_is_reported_at_once() {
        let src = "audit_log = \"a.jsonl\"\ntenant_header = \"Authorization\"\n[audit]\npath = \"b.jsonl\"\ndurable = \"yes\"\non_failure = \"fail-maybe\"\nrotate_bytes = 10\nkeep = 0\nflush = 1\n[timeouts]\nidle_ms = 0\nread_ms = 5\n";
        assert_problems(
            src,
            &[
                "v.toml:2",
                "tenant_header",
                "audit.path",
                "audit.durable",
                "audit.on_failure",
                "`fail-maybe` is not one of `fail-open`, `fail-closed`",
                "audit.rotate_bytes",
                "audit.keep",
                "audit.flush",
                "timeouts.idle_ms",
                "timeouts.read_ms",
            ],
        );
    }
}
