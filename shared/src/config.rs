//! TOML configuration of both binaries: types with named defaults, strict parsing
//! (`deny_unknown_fields`), and a validation pass whose errors name the key and its line.
//!
//! Every bound a peer can push against is a key here, with its default as a named
//! constant. `docs/configuration.md` documents each key.

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::framing::DEFAULT_MAX_MESSAGE_BYTES;
use crate::routing::DEFAULT_SEPARATOR;

/// Smallest accepted `max_message_bytes` (1 KiB).
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `max_message_bytes` (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default bound on requests in flight from the router to the gateway.
pub const DEFAULT_ROUTER_MAX_IN_FLIGHT: usize = 256;
/// Default bound on requests in flight per gateway session.
pub const DEFAULT_SESSION_MAX_IN_FLIGHT: usize = 64;
/// Default bound on concurrent client sessions of the gateway.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;
/// Default time a client has to complete the WebSocket handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request may take before it is answered with a timeout error.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time the router waits for the gateway's WebSocket handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a peer's socket may take no bytes, while a message waits to go out,
/// before the sender treats the connection as lost (the router's gateway link, a gateway
/// client session): a peer that stopped reading. A slow peer that keeps reading is
/// never cut off (`meter`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a WebSocket peer (the router's gateway, a gateway client) may stay
/// silent (no byte) before it is probed with a ping (and, with no byte for as long
/// again, treated as gone).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default first wait of the router before it reconnects to the gateway (doubled after
/// each failed attempt, up to [`DEFAULT_RECONNECT_MAX_DELAY`]).
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Default longest wait of the router between two connection attempts.
pub const DEFAULT_RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);
/// Default time a backend has to exit after its stdin is closed, before it is killed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Default WebSocket endpoint path.
pub const DEFAULT_PATH: &str = "/mcp";
/// Default gateway listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default admin (health, metrics) listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// Exit code for a configuration error (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration that could not be loaded, with where the problem is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `backends[1].session`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("config")?,
        }
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        f.write_str(": ")?;
        if let Some(k) = &self.key {
            write!(f, "key `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before it is located in the source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Key path segments, e.g. `["backends", "1", "name"]` (indices as text).
    pub path: Vec<String>,
    /// What is wrong.
    pub message: String,
}

fn invalid(path: &[&str], message: impl Into<String>) -> Invalid {
    Invalid {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// A duration written as text: `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Why a collector URL with `user:password@` before the host is refused.
pub const NO_CREDENTIALS_IN_COLLECTOR_URL: &str = "credentials in the collector URL \
    (user:password@host) are not supported: send them as a header (otlp_headers, e.g. \
    authorization = \"Basic …\")";

/// The longest duration any setting takes: nothing here needs more, and a deadline
/// computed from a larger one (`Instant::now() + d`) could overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"` (a whole number and a unit), at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"30s\", \"5m\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ))
        }
    };
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is longer than the most allowed, 24h"
        ));
    }
    Ok(d)
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Diagnostics.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `timestamp LEVEL target: message [trace_id=… span_id=…]`
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// `[logging]`
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Level; the environment variable `MCP_LOG` overrides it.
    #[serde(default)]
    pub level: LogLevel,
    /// `plain` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_router_in_flight() -> usize {
    DEFAULT_ROUTER_MAX_IN_FLIGHT
}
fn default_session_in_flight() -> usize {
    DEFAULT_SESSION_MAX_IN_FLIGHT
}
fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}
fn default_handshake_timeout() -> Dur {
    Dur(DEFAULT_HANDSHAKE_TIMEOUT)
}
fn default_request_timeout() -> Dur {
    Dur(DEFAULT_REQUEST_TIMEOUT)
}
fn default_connect_timeout() -> Dur {
    Dur(DEFAULT_CONNECT_TIMEOUT)
}
fn default_send_timeout() -> Dur {
    Dur(DEFAULT_SEND_TIMEOUT)
}
fn default_ping_interval() -> Dur {
    Dur(DEFAULT_PING_INTERVAL)
}
fn default_reconnect_delay() -> Dur {
    Dur(DEFAULT_RECONNECT_DELAY)
}
fn default_reconnect_max_delay() -> Dur {
    Dur(DEFAULT_RECONNECT_MAX_DELAY)
}
fn default_shutdown_grace() -> Dur {
    Dur(DEFAULT_SHUTDOWN_GRACE)
}
fn default_path() -> String {
    DEFAULT_PATH.into()
}
fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
/// Most `[[backends]]` a gateway takes (each has its own `mcp_gateway_backend_*`
/// series, a bounded set).
pub const MAX_BACKENDS: usize = 256;

fn default_separator() -> String {
    DEFAULT_SEPARATOR.into()
}

// ---------------------------------------------------------------------------------------
// Tracing

/// Default OTLP endpoint for `otlp_protocol = "grpc"`.
pub const DEFAULT_OTLP_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default OTLP endpoint for `otlp_protocol = "http/protobuf"`.
pub const DEFAULT_OTLP_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// The path OTLP/HTTP posts traces to, under a base endpoint.
pub const OTLP_HTTP_TRACES_PATH: &str = "/v1/traces";
/// Default time one export (with its retries) may take.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on finished spans waiting for export; more are dropped and counted.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// Default number of spans per export of the router (also what the queue usually
/// holds, so it sets the steady memory of tracing: ~1 KB a span; the router's RSS
/// budget is 2 MB).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 128;
/// Default number of spans per export of the gateway: each export costs the exporter
/// thread a wake-up and a round trip, and the gateway makes several spans per request
/// (docs/benchmark.md, "Changes made": 512 against 128 at always_on, C = 32). Capped
/// by `max_queue_size` when only that is set.
pub const GATEWAY_MAX_EXPORT_BATCH_SIZE: usize = 512;
/// Default time between exports of a partial batch.
pub const DEFAULT_SCHEDULED_DELAY: Duration = Duration::from_secs(1);

/// Which sampler decides for root spans.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerType {
    /// Keep every trace (and honour a parent's decision).
    #[default]
    AlwaysOn,
    /// Record nothing in this service, whatever the parent says.
    AlwaysOff,
    /// Keep a fraction (`sampler_param`) of root traces by trace id; honour parents.
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
}

/// Where finished spans go.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExporterType {
    /// OTLP to a collector.
    #[default]
    Otlp,
    /// A human-readable tree per trace (stderr in the router, stdout in the gateway).
    Stdout,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317); the default when it is built in.
    #[cfg_attr(any(feature = "otlp-grpc", not(feature = "otlp-http")), default)]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318); the default of a build with only it.
    #[cfg_attr(all(feature = "otlp-http", not(feature = "otlp-grpc")), default)]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Format of the stdout exporter.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// An indented tree per trace.
    #[default]
    Tree,
    /// One JSON object per span and line.
    Json,
}

/// How many spans the gateway makes per request.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpanDetail {
    /// The guide's tree: `http.request` with `auth.verify`, `request.validate`,
    /// `rate_limit.check`, `discovery.resolve` and `backend.forward` children.
    #[default]
    Full,
    /// `http.request` and `backend.forward` only; the four short steps become events
    /// (same names and attributes) on `http.request`, for a third of the span cost.
    Basic,
}

fn default_sampler_param() -> f64 {
    1.0
}
fn default_otlp_timeout() -> Dur {
    Dur(DEFAULT_OTLP_TIMEOUT)
}
fn default_max_queue_size() -> usize {
    DEFAULT_MAX_QUEUE_SIZE
}
fn default_scheduled_delay() -> Dur {
    Dur(DEFAULT_SCHEDULED_DELAY)
}

/// A section (`[limits]`) or a backend (`[[backends]]`): a table and nothing else.
/// serde's derived structs also take an array, field by field in declaration order, so
/// `limits = [1]` would set `max_message_bytes` to 1 without a word, and `[[limits]]`
/// would read a whole table as that first number. Such keys are read through
/// [`table`], [`opt_table`] and [`tables`], which say "expected a table" instead.
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OnlyMaps<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(OnlyMaps(std::marker::PhantomData))
            .map(Table)
    }
}

fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Table::deserialize(d).map(|t| t.0)
}

fn opt_table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    table(d).map(Some)
}

fn tables<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    let all = Vec::<Table<T>>::deserialize(d)?;
    Ok(all.into_iter().map(|t| t.0).collect())
}

/// A file named by the configuration or by an environment variable, with which one
/// (so that a file that cannot be used is reported under the name the operator wrote).
#[derive(Clone, Debug, PartialEq)]
pub struct FileSetting {
    /// The path as given.
    pub path: PathBuf,
    /// The key (`tracing.otlp_certificate`) or variable (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub origin: &'static str,
}

impl fmt::Display for FileSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.origin, self.path.display())
    }
}

fn de_file<'de, D: Deserializer<'de>>(
    d: D,
    origin: &'static str,
) -> Result<Option<FileSetting>, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if path.as_os_str().is_empty() {
        return Err(serde::de::Error::custom("empty path"));
    }
    Ok(Some(FileSetting { path, origin }))
}
fn de_otlp_certificate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FileSetting>, D::Error> {
    de_file(d, "tracing.otlp_certificate")
}
fn de_otlp_client_certificate<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<FileSetting>, D::Error> {
    de_file(d, "tracing.otlp_client_certificate")
}
fn de_otlp_client_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FileSetting>, D::Error> {
    de_file(d, "tracing.otlp_client_key")
}

/// `[tracing]` of both binaries (the keys of the distributed tracing guide, plus OTLP
/// protocol, headers, timeout and batch settings). The `OTEL_*` environment variables
/// override these; see `docs/tracing.md`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Off by default: no exporter thread, no span work.
    #[serde(default)]
    pub enabled: bool,
    /// `service.name` (default: the binary's name).
    pub service_name: Option<String>,
    /// `service.version` (default: the binary's version).
    pub service_version: Option<String>,
    /// `deployment.environment.name`.
    pub environment: Option<String>,
    /// Root sampler.
    #[serde(default)]
    pub sampler_type: SamplerType,
    /// Ratio for `traceidratio`, 0.0 to 1.0.
    #[serde(default = "default_sampler_param")]
    pub sampler_param: f64,
    /// Where spans go.
    #[serde(default)]
    pub exporter_type: ExporterType,
    /// Collector endpoint, `http[s]://host[:port][/base]`; unset: the protocol's
    /// default ([`DEFAULT_OTLP_GRPC_ENDPOINT`], [`DEFAULT_OTLP_HTTP_ENDPOINT`]). See
    /// [`TracingConfig::endpoint`] and [`TracingConfig::http_traces_url`].
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The endpoint is the full URL to post traces to, used as it is (set by
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, never by the file).
    #[serde(skip)]
    pub otlp_endpoint_is_full_url: bool,
    /// Resource attributes from `OTEL_RESOURCE_ATTRIBUTES` other than the three above
    /// (never from the file: its keys are the guide's).
    #[serde(skip)]
    pub resource_attributes: Vec<(String, String)>,
    /// A check of the endpoint's scheme, which alone decides plain text or TLS: unset
    /// (default) accepts either; `true` requires `http://`, `false` requires `https://`.
    pub otlp_insecure: Option<bool>,
    /// PEM bundle of the CAs trusted for the collector's certificate (instead of the
    /// system roots); `https://` only.
    #[serde(default, deserialize_with = "de_otlp_certificate")]
    pub otlp_certificate: Option<FileSetting>,
    /// PEM client certificate chain for mutual TLS (with `otlp_client_key`).
    #[serde(default, deserialize_with = "de_otlp_client_certificate")]
    pub otlp_client_certificate: Option<FileSetting>,
    /// PEM private key of `otlp_client_certificate`.
    #[serde(default, deserialize_with = "de_otlp_client_key")]
    pub otlp_client_key: Option<FileSetting>,
    /// `grpc` or `http/protobuf`.
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// Extra headers (gRPC metadata) sent with every export, e.g. an API key.
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, String>,
    /// Time one export, retries included, may take.
    #[serde(default = "default_otlp_timeout")]
    pub otlp_timeout: Dur,
    /// Finished spans waiting for export, at most; more are dropped and counted.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// Spans per export; `None`: the binary's default ([`DEFAULT_MAX_EXPORT_BATCH_SIZE`],
    /// [`GATEWAY_MAX_EXPORT_BATCH_SIZE`]), at most `max_queue_size`
    /// ([`TracingConfig::export_batch_size`]).
    #[serde(default)]
    pub max_export_batch_size: Option<usize>,
    /// Time between exports of a partial batch.
    #[serde(default = "default_scheduled_delay")]
    pub scheduled_delay: Dur,
    /// `tree` or `json` for the stdout exporter.
    #[serde(default)]
    pub stdout_format: StdoutFormat,
    /// `full` (default) or `basic`: the gateway's short steps as spans or as events.
    #[serde(default)]
    pub span_detail: SpanDetail,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            service_name: None,
            service_version: None,
            environment: None,
            sampler_type: SamplerType::default(),
            sampler_param: default_sampler_param(),
            exporter_type: ExporterType::default(),
            otlp_endpoint: None,
            otlp_endpoint_is_full_url: false,
            resource_attributes: Vec::new(),
            otlp_insecure: None,
            otlp_certificate: None,
            otlp_client_certificate: None,
            otlp_client_key: None,
            otlp_protocol: OtlpProtocol::default(),
            otlp_headers: BTreeMap::new(),
            otlp_timeout: default_otlp_timeout(),
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            max_export_batch_size: None,
            scheduled_delay: default_scheduled_delay(),
            stdout_format: StdoutFormat::default(),
            span_detail: SpanDetail::default(),
        }
    }
}

impl TracingConfig {
    /// Spans per export: `max_export_batch_size`, or else `default` (the binary's) but
    /// no more than the queue holds.
    pub fn export_batch_size(&self, default: usize) -> usize {
        self.max_export_batch_size
            .unwrap_or_else(|| default.min(self.max_queue_size))
    }

    /// The collector endpoint: `otlp_endpoint`, or the protocol's default. One without
    /// a scheme (`otel-collector:4317`, as the guide's deployment example writes it,
    /// and the Go exporter takes it) gets it from `otlp_insecure`: `http://` for `true`,
    /// otherwise `https://` (the OTLP exporter specification's default is secure).
    pub fn endpoint(&self) -> Cow<'_, str> {
        match (&self.otlp_endpoint, self.otlp_protocol) {
            (Some(e), _) if !e.contains("://") => {
                let scheme = if self.otlp_insecure == Some(true) {
                    "http"
                } else {
                    "https"
                };
                Cow::Owned(format!("{scheme}://{e}"))
            }
            (Some(e), _) => Cow::Borrowed(e),
            (None, OtlpProtocol::Grpc) => Cow::Borrowed(DEFAULT_OTLP_GRPC_ENDPOINT),
            (None, OtlpProtocol::HttpProtobuf) => Cow::Borrowed(DEFAULT_OTLP_HTTP_ENDPOINT),
        }
    }

    /// The URL OTLP/HTTP posts to: the endpoint as it is when it is a full URL
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or already ends with `/v1/traces`;
    /// otherwise the endpoint is a base and `/v1/traces` goes under it, as the OTLP
    /// exporter specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`http://c:4318/otlp` → `http://c:4318/otlp/v1/traces`).
    pub fn http_traces_url(&self) -> String {
        let ep = self.endpoint();
        let base = ep.trim_end_matches('/');
        if self.otlp_endpoint_is_full_url {
            ep.into_owned()
        } else if base.ends_with(OTLP_HTTP_TRACES_PATH) {
            base.to_string()
        } else {
            format!("{base}{OTLP_HTTP_TRACES_PATH}")
        }
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        // An empty name would put every span under a nameless service (the default, the
        // binary's name, is what leaving the key out gives).
        if self
            .service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(invalid(
                &["tracing", "service_name"],
                "must not be empty (leave it out for the binary's name)",
            ));
        }
        if !(0.0..=1.0).contains(&self.sampler_param) || self.sampler_param.is_nan() {
            return Err(invalid(
                &["tracing", "sampler_param"],
                format!("{} is outside 0.0..=1.0", self.sampler_param),
            ));
        }
        // A protocol this build has no exporter for: refused with the file (and by
        // `--check-config`), not at the next start.
        let (built, name) = match self.otlp_protocol {
            OtlpProtocol::Grpc => (cfg!(feature = "otlp-grpc"), "grpc"),
            OtlpProtocol::HttpProtobuf => (cfg!(feature = "otlp-http"), "http/protobuf"),
        };
        if self.enabled && self.exporter_type == ExporterType::Otlp && !built {
            return Err(invalid(
                &["tracing", "otlp_protocol"],
                format!(
                    "\"{name}\" is not built into this binary (cargo features: {}): use a \
                     build with it, another protocol, or exporter_type = \"stdout\"",
                    crate::features()
                ),
            ));
        }
        // No message here repeats the endpoint: a password may be in it.
        let ep = self.endpoint();
        let (scheme, rest) = ep.split_once("://").unwrap_or(("", &ep));
        if rest.split('/').next().unwrap_or("").contains('@') {
            return Err(invalid(
                &["tracing", "otlp_endpoint"],
                NO_CREDENTIALS_IN_COLLECTOR_URL.to_string(),
            ));
        }
        if !matches!(scheme, "http" | "https") {
            return Err(invalid(
                &["tracing", "otlp_endpoint"],
                format!(
                    "the scheme must be http:// or https://, or none (host:port, which \
                     otlp_insecure = true makes http://); given: {scheme:?}"
                ),
            ));
        }
        // Host, port and path as the exporter will read them: an endpoint it could
        // never connect to is refused here (`--check-config`, a reload), not by the
        // next start.
        crate::telemetry::endpoint::Endpoint::parse(&ep, 1)
            .map_err(|why| invalid(&["tracing", "otlp_endpoint"], why))?;
        let tls = ep.starts_with("https://");
        if tls && !cfg!(feature = "otlp-tls") {
            let given = if self
                .otlp_endpoint
                .as_ref()
                .is_some_and(|e| !e.contains("://"))
            {
                "no scheme, which means https:// unless otlp_insecure = true"
            } else {
                "an https:// endpoint"
            };
            return Err(invalid(
                &["tracing", "otlp_endpoint"],
                format!(
                    "{given}: TLS to the collector is not built into this binary (cargo \
                     feature `otlp-tls`): use a build with it, or an http:// endpoint (e.g. a \
                     local collector that forwards over TLS)"
                ),
            ));
        }
        match self.otlp_insecure {
            Some(false) if !tls => {
                return Err(invalid(
                    &["tracing", "otlp_insecure"],
                    "false asks for TLS, but the endpoint is http:// (plain text): use an \
                     https:// endpoint"
                        .to_string(),
                ))
            }
            Some(true) if tls => {
                return Err(invalid(
                    &["tracing", "otlp_insecure"],
                    "true with an https:// endpoint: it is always TLS with the certificate \
                     verified (there is no way to skip that); trust a private CA with \
                     otlp_certificate, and remove otlp_insecure"
                        .to_string(),
                ))
            }
            _ => {}
        }
        match (&self.otlp_client_certificate, &self.otlp_client_key) {
            // Named by the one that is set (it has a line in the file), not the one
            // that is missing.
            (Some(c), None) => {
                return Err(invalid(
                    &["tracing", "otlp_client_certificate"],
                    format!("{c} needs otlp_client_key (its private key) too"),
                ))
            }
            (None, Some(k)) => {
                return Err(invalid(
                    &["tracing", "otlp_client_key"],
                    format!("{k} needs otlp_client_certificate (its certificate chain) too"),
                ))
            }
            _ => {}
        }
        for (name, value) in &self.otlp_headers {
            let grpc = self.otlp_protocol == OtlpProtocol::Grpc;
            if let Err(why) = check_otlp_header(name, value, grpc) {
                return Err(invalid(&["tracing", "otlp_headers", name], why));
            }
        }
        validate_nonzero(self.max_queue_size, &["tracing", "max_queue_size"])?;
        if let Some(batch) = self.max_export_batch_size {
            validate_nonzero(batch, &["tracing", "max_export_batch_size"])?;
            if batch > self.max_queue_size {
                return Err(invalid(
                    &["tracing", "max_export_batch_size"],
                    "must not exceed max_queue_size",
                ));
            }
        }
        validate_positive_duration(self.otlp_timeout, &["tracing", "otlp_timeout"])?;
        validate_positive_duration(self.scheduled_delay, &["tracing", "scheduled_delay"])
    }
}

/// Headers the exporters set themselves, or that HTTP/1.1 and HTTP/2 forbid a client to
/// choose (connection-specific); names starting with `grpc-` are gRPC's own.
pub const RESERVED_OTLP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "user-agent",
];

/// An `otlp_headers` entry must be sendable as an HTTP/1.1 header and, with `grpc`, as
/// gRPC metadata: a token name that is not reserved, and a value of visible ASCII,
/// spaces and tabs. gRPC's metadata keys are narrower than HTTP's tokens (`0-9 a-z _ -
/// .`); an upper-case letter stands for its lower case (HTTP/2 sends names in lower
/// case, and the exporter lowercases them), and a key ending in `-bin` would make the
/// value binary (base64), which a text value here is not. (Checked here so that a bad
/// header is a startup error, not a failure of every export.)
fn check_otlp_header(name: &str, value: &str, grpc: bool) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let metadata = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if grpc && !name.chars().all(metadata) {
        return Err(format!(
            "{name:?} is not a valid gRPC metadata key (letters, digits, _ - . only; \
             otlp_protocol is grpc)"
        ));
    }
    if grpc && name.to_ascii_lowercase().ends_with("-bin") {
        return Err(format!(
            "{name:?} ends in -bin, which gRPC takes for a binary (base64) value; \
             header values here are text"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_OTLP_HEADERS.contains(&lower.as_str()) || lower.starts_with("grpc-") {
        return Err(format!(
            "{name:?} is set by the exporter and cannot be configured"
        ));
    }
    if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        return Err(format!(
            "the value of {name:?} must be printable ASCII (no line breaks or control characters)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Router

/// The router's whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// `[gateway]`: where to relay to (absent: only `--gateway` can say where).
    #[serde(default, deserialize_with = "table")]
    pub gateway: GatewayLink,
    /// `[limits]`
    #[serde(default, deserialize_with = "table")]
    pub limits: RouterLimits,
    /// `[logging]`
    #[serde(default, deserialize_with = "table")]
    pub logging: LoggingConfig,
    /// `[tracing]`
    #[serde(default, deserialize_with = "table")]
    pub tracing: TracingConfig,
}

/// `[gateway]` of the router.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayLink {
    /// `ws://host:port/path` of the gateway.
    #[serde(default)]
    pub url: GatewayUrl,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Deadline for connecting and the WebSocket handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest the gateway's socket may take no bytes while a message waits; past it the
    /// link is lost.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// Silence on the link after which it is pinged; no byte for as long again after
    /// the ping and the link is lost (a gateway host that vanished, a dead NAT entry).
    /// Zero turns the pings off.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: Dur,
    /// Wait before reconnecting after the link is lost or a connection attempt fails;
    /// doubled (with jitter) after each failed attempt, up to `reconnect_max_delay`.
    /// Zero: never reconnect (every request is answered with an error from then on).
    #[serde(default = "default_reconnect_delay")]
    pub reconnect_delay: Dur,
    /// Longest wait between two connection attempts.
    #[serde(default = "default_reconnect_max_delay")]
    pub reconnect_max_delay: Dur,
}

impl Default for GatewayLink {
    fn default() -> Self {
        GatewayLink {
            url: GatewayUrl::default(),
            token_env: None,
            token_file: None,
            connect_timeout: default_connect_timeout(),
            send_timeout: default_send_timeout(),
            ping_interval: default_ping_interval(),
            reconnect_delay: default_reconnect_delay(),
            reconnect_max_delay: default_reconnect_max_delay(),
        }
    }
}

/// `[gateway] url` as the file gives it: the text, or that it is missing or no
/// string. The command line's `--gateway` replaces it whatever it is; without the flag,
/// [`RouterConfig::validate`] names what is wrong. (Taken this way rather than as a
/// `String` so that the flag's case needs no second pass over the file as a
/// `toml::Table`: that path cost the router ~60 KB of code, all of it resident.)
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayUrl {
    text: String,
    state: UrlState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum UrlState {
    #[default]
    Missing,
    Given,
    NotText,
}

impl std::ops::Deref for GatewayUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl From<&str> for GatewayUrl {
    fn from(url: &str) -> Self {
        GatewayUrl {
            text: url.to_string(),
            state: UrlState::Given,
        }
    }
}

impl PartialEq<&str> for GatewayUrl {
    fn eq(&self, other: &&str) -> bool {
        self.state == UrlState::Given && self.text == *other
    }
}

impl<'de> Deserialize<'de> for GatewayUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct AnyValue;
        let not_text = || GatewayUrl {
            text: String::new(),
            state: UrlState::NotText,
        };
        impl<'de> Visitor<'de> for AnyValue {
            type Value = Option<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(v.to_string()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
        Ok(match d.deserialize_any(AnyValue)? {
            Some(text) => GatewayUrl {
                text,
                state: UrlState::Given,
            },
            None => not_text(),
        })
    }
}

/// `[limits]` of the router.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterLimits {
    /// Largest message accepted on stdin or from the gateway.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Requests forwarded and not yet answered, at most.
    #[serde(default = "default_router_in_flight")]
    pub max_in_flight: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: DEFAULT_ROUTER_MAX_IN_FLIGHT,
        }
    }
}

impl RouterConfig {
    /// A configuration with defaults and the given gateway URL (`--gateway`).
    pub fn with_url(url: &str) -> Self {
        RouterConfig {
            gateway: GatewayLink {
                url: GatewayUrl::from(url),
                ..GatewayLink::default()
            },
            limits: RouterLimits::default(),
            logging: LoggingConfig::default(),
            tracing: TracingConfig::default(),
        }
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = &self.gateway.url;
        match url.state {
            UrlState::Missing => {
                return Err(invalid(
                    &["gateway", "url"],
                    "missing: set [gateway] url, or pass --gateway",
                ))
            }
            UrlState::NotText => {
                return Err(invalid(
                    &["gateway", "url"],
                    "must be a string (ws://host[:port]/path)",
                ))
            }
            UrlState::Given => {}
        }
        validate_ws_url(url).map_err(|m| invalid(&["gateway", "url"], m))?;
        if self.gateway.token_env.is_some() && self.gateway.token_file.is_some() {
            return Err(invalid(
                &["gateway", "token_file"],
                "set token_env or token_file, not both",
            ));
        }
        validate_positive_duration(
            self.gateway.connect_timeout,
            &["gateway", "connect_timeout"],
        )?;
        validate_positive_duration(self.gateway.send_timeout, &["gateway", "send_timeout"])?;
        let (first, most) = (
            self.gateway.reconnect_delay.0,
            self.gateway.reconnect_max_delay.0,
        );
        if !first.is_zero() && most < first {
            return Err(invalid(
                &["gateway", "reconnect_max_delay"],
                format!(
                    "must be at least reconnect_delay ({} ms)",
                    first.as_millis()
                ),
            ));
        }
        validate_message_bytes(self.limits.max_message_bytes)?;
        validate_nonzero(self.limits.max_in_flight, &["limits", "max_in_flight"])?;
        self.tracing.validate()
    }
}

/// Checks a gateway URL: `ws://host[:port][/path][?query]` (TLS is not built in, so no
/// `wss://`). Credentials before the host are refused, and so is a port that is not a
/// number: `ws://user:pa/ss@host` is read that way (a `/` ends the authority). No
/// message repeats the URL, which may hold a password.
pub fn validate_ws_url(url: &str) -> Result<(), String> {
    if url.starts_with("wss://") {
        return Err("wss:// is not supported by this build (no TLS); use ws:// behind a TLS-terminating proxy or on loopback".into());
    }
    let Some(rest) = url.strip_prefix("ws://") else {
        let scheme = url.split_once("://").map_or("none", |(s, _)| s);
        return Err(format!(
            "not a ws:// URL (ws://host[:port]/path; scheme given: {scheme:?})"
        ));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL contains a space or a control character".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        // Never sent as such, and it would end up in logs and span attributes.
        return Err(
            "credentials in the URL (user:password@host) are not supported: the router \
             sends a bearer token from [gateway] token_env or token_file"
                .into(),
        );
    }
    let (host, port) = split_authority(authority);
    if host.is_empty() {
        return Err("the URL has no host (ws://host[:port]/path)".into());
    }
    let v6 = authority.starts_with('[');
    if !host.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (v6 && matches!(c, ':' | '%'))
    }) {
        return Err("the URL's host is not a host name or an IP address".into());
    }
    if !port.is_empty() && !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(
            "the port after the host is not a number from 1 to 65535 (credentials in the \
             URL, user:password@host, are not supported either)"
                .into(),
        );
    }
    Ok(())
}

/// The host (without the brackets of an IPv6 address) and the port text (empty when
/// none is given) of a URL's authority: the port follows the last `:`, or the `]` of
/// an IPv6 address.
pub fn split_authority(authority: &str) -> (&str, &str) {
    if let Some(v6) = authority.strip_prefix('[') {
        return match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':').unwrap_or(rest)),
            None => ("", ""),
        };
    }
    authority.rsplit_once(':').unwrap_or((authority, ""))
}

/// `url` with every query value replaced by `REDACTED`, for logs, errors and span
/// attributes: a query value may be a credential (`?access_token=…`) and tells a
/// reader nothing they need. A URL without a query is returned as it is.
pub fn redact_url_query(url: &str) -> Cow<'_, str> {
    let Some((base, query)) = url.split_once('?') else {
        return Cow::Borrowed(url);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            None => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

/// A resource URI without what may be a credential in it: every query value
/// ([`redact_url_query`]) and the user information before a host
/// (`postgres://user:secret@db/x` → `postgres://REDACTED@db/x`), as the semantic
/// conventions ask of `url.full`. The rest, which says which resource, is kept.
pub fn redact_uri(uri: &str) -> Cow<'_, str> {
    let uri = redact_url_query(uri);
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri;
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) if is_scheme => Cow::Owned(format!("{scheme}://REDACTED{}", &rest[at..])),
        _ => uri,
    }
}

// ---------------------------------------------------------------------------------------
// Gateway

/// The gateway's whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[server]`
    #[serde(default, deserialize_with = "table")]
    pub server: ServerConfig,
    /// `[limits]`
    #[serde(default, deserialize_with = "table")]
    pub limits: GatewayLimits,
    /// `[routing]`
    #[serde(default, deserialize_with = "table")]
    pub routing: RoutingConfig,
    /// `[auth]`: when present, clients must send `Authorization: Bearer <token>`.
    #[serde(default, deserialize_with = "opt_table")]
    pub auth: Option<AuthConfig>,
    /// `[admin]`: when present, `/healthz`, `/readyz` and `/metrics` are served.
    #[serde(default, deserialize_with = "opt_table")]
    pub admin: Option<AdminConfig>,
    /// `[logging]`
    #[serde(default, deserialize_with = "table")]
    pub logging: LoggingConfig,
    /// `[tracing]`
    #[serde(default, deserialize_with = "table")]
    pub tracing: TracingConfig,
    /// `[[backends]]`
    #[serde(default, deserialize_with = "tables")]
    pub backends: Vec<BackendConfig>,
}

/// `[server]` of the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `ip:port` to listen on (port 0 picks a free port, logged at start).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// WebSocket endpoint path.
    #[serde(default = "default_path")]
    pub path: String,
    /// Concurrent client sessions, at most; further handshakes get HTTP 503.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Deadline for a client to complete the WebSocket handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// Longest a client's socket may take no bytes while a message waits; past it the
    /// session closes.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// Client silence after which it is pinged; no byte for as long again after the
    /// ping and the session closes. Zero turns the pings off.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: Dur,
    /// On shutdown, how long backends get to exit after stdin closes.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            path: default_path(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            handshake_timeout: default_handshake_timeout(),
            send_timeout: default_send_timeout(),
            ping_interval: default_ping_interval(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// `[limits]` of the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayLimits {
    /// Largest message accepted from a client or a backend.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Requests in flight per client session, at most.
    #[serde(default = "default_session_in_flight")]
    pub max_in_flight: usize,
    /// Time a request may take (default for every backend).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: DEFAULT_SESSION_MAX_IN_FLIGHT,
            request_timeout: default_request_timeout(),
        }
    }
}

/// `[routing]` of the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Between backend name and tool/prompt name.
    #[serde(default = "default_separator")]
    pub separator: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            separator: default_separator(),
        }
    }
}

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}

/// `[admin]` of the gateway.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` of the admin listener (plain HTTP; keep it on loopback or a private
    /// network: it needs no token).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

/// `[auth]` of the gateway: one bearer token.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Environment variable holding the expected token.
    pub token_env: Option<String>,
    /// File holding the expected token.
    pub token_file: Option<PathBuf>,
}

/// How a backend is reached.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A subprocess speaking MCP over stdin/stdout.
    Stdio,
}

/// Whether clients share a backend process.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// One process per client session (started on first need, stopped with the session).
    #[default]
    PerClient,
    /// One process for all sessions, requests multiplexed with id remapping.
    Shared,
}

/// `[[backends]]`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name; the namespace prefix of its tools and prompts.
    pub name: String,
    /// Only `stdio` so far.
    pub transport: Transport,
    /// Program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// `per_client` (default) or `shared`.
    #[serde(default)]
    pub session: SessionMode,
    /// Overrides `[limits] request_timeout` for this backend.
    pub request_timeout: Option<Dur>,
}

impl GatewayConfig {
    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                &["server", "listen"],
                format!("{:?} is not an ip:port address", self.server.listen),
            )
        })?;
        if !self.server.path.starts_with('/') {
            return Err(invalid(&["server", "path"], "must start with '/'"));
        }
        if self
            .server
            .path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
        {
            // A request target with them is split (space), or its path never equals
            // this (`?`, `#` start the query and the fragment): no client could connect.
            return Err(invalid(
                &["server", "path"],
                "must not contain spaces, control characters, '?' or '#'",
            ));
        }
        validate_nonzero(self.server.max_sessions, &["server", "max_sessions"])?;
        if let Some(a) = &self.admin {
            let admin = a.listen.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &["admin", "listen"],
                    format!("{:?} is not an ip:port address", a.listen),
                )
            })?;
            let server = self.server.listen.parse::<SocketAddr>().ok();
            if server.is_some_and(|s| listens_clash(s, admin)) {
                // Caught here, so `--check-config` says so, not the start.
                return Err(invalid(
                    &["admin", "listen"],
                    format!(
                        "{:?} is the port [server] listen ({:?}) takes",
                        a.listen, self.server.listen
                    ),
                ));
            }
        }
        validate_positive_duration(
            self.server.handshake_timeout,
            &["server", "handshake_timeout"],
        )?;
        validate_positive_duration(self.server.send_timeout, &["server", "send_timeout"])?;
        validate_message_bytes(self.limits.max_message_bytes)?;
        validate_nonzero(self.limits.max_in_flight, &["limits", "max_in_flight"])?;
        validate_positive_duration(self.limits.request_timeout, &["limits", "request_timeout"])?;
        let sep = &self.routing.separator;
        if sep.is_empty() || sep.chars().any(char::is_whitespace) {
            return Err(invalid(
                &["routing", "separator"],
                "must be non-empty and contain no whitespace",
            ));
        }
        self.tracing.validate()?;
        if let Some(a) = &self.auth {
            if a.token_env.is_some() == a.token_file.is_some() {
                return Err(invalid(
                    &["auth"],
                    "set exactly one of token_env or token_file",
                ));
            }
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(invalid(
                &["backends"],
                format!(
                    "{} backends; at most {MAX_BACKENDS} (each gets metric series)",
                    self.backends.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let idx = i.to_string();
            let at = |k: &str| vec!["backends".to_string(), idx.clone(), k.to_string()];
            let bad = |k: &str, m: String| Invalid {
                path: at(k),
                message: m,
            };
            if b.name.is_empty()
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(
                    "name",
                    format!("{:?}: use letters, digits, '-' and '_' only", b.name),
                ));
            }
            // `<name><separator>` must split back at the end of the name: a name that
            // contains the separator, or ends with its start (`fx_` with `__`), would
            // route the tools it lists to another backend.
            if format!("{}{sep}", b.name).find(sep.as_str()) != Some(b.name.len()) {
                return Err(bad(
                    "name",
                    format!(
                        "{:?} contains the routing separator {sep:?}, or ends with part of it: its prefixed names would not split back at the separator",
                        b.name
                    ),
                ));
            }
            if !seen.insert(b.name.as_str()) {
                return Err(bad("name", format!("duplicate backend name {:?}", b.name)));
            }
            if b.command.trim().is_empty() {
                return Err(bad("command", "must not be empty".into()));
            }
            // What the operating system cannot pass to a program: every start of the
            // backend would fail.
            const NUL: &str = "contains a NUL character, which a program cannot be given";
            if b.command.contains('\0') {
                return Err(bad("command", NUL.into()));
            }
            if let Some(j) = b.args.iter().position(|a| a.contains('\0')) {
                let mut path = at("args");
                path.push(j.to_string());
                return Err(Invalid {
                    path,
                    message: NUL.into(),
                });
            }
            for (k, v) in &b.env {
                let why = if k.is_empty() || k.contains(['=', '\0']) {
                    "the name must be non-empty, without '=' or NUL"
                } else if v.contains('\0') {
                    NUL
                } else {
                    continue;
                };
                let mut path = at("env");
                path.push(k.clone());
                return Err(Invalid {
                    path,
                    message: why.into(),
                });
            }
            if let Some(t) = b.request_timeout {
                if t.0.is_zero() {
                    return Err(bad("request_timeout", "must be greater than zero".into()));
                }
            }
        }
        Ok(())
    }

    /// The request timeout of a backend.
    pub fn request_timeout(&self, backend: &BackendConfig) -> Duration {
        backend
            .request_timeout
            .unwrap_or(self.limits.request_timeout)
            .0
    }
}

/// Whether two listeners could not both bind: the same fixed port, on the same address
/// or one of them on every address of the family, or one on every IPv6 address (which
/// on Linux takes IPv4 too: the gateway does not set `IPV6_V6ONLY`, and
/// `net.ipv6.bindv6only` is 0 by default).
fn listens_clash(a: SocketAddr, b: SocketAddr) -> bool {
    let every_v6 = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    a.port() != 0
        && a.port() == b.port()
        && (every_v6(a)
            || every_v6(b)
            || (a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn validate_nonzero(v: usize, path: &[&str]) -> Result<(), Invalid> {
    if v == 0 {
        return Err(invalid(path, "must be greater than zero"));
    }
    Ok(())
}

fn validate_positive_duration(d: Dur, path: &[&str]) -> Result<(), Invalid> {
    if d.0.is_zero() {
        return Err(invalid(path, "must be greater than zero"));
    }
    Ok(())
}

fn validate_message_bytes(v: usize) -> Result<(), Invalid> {
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&v) {
        return Err(invalid(
            &["limits", "max_message_bytes"],
            format!("{v} is outside {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Loading

/// A configuration type that can check itself.
pub trait Validate {
    /// Checks values the types cannot.
    fn check(&self) -> Result<(), Invalid>;
}

impl Validate for RouterConfig {
    fn check(&self) -> Result<(), Invalid> {
        self.validate()
    }
}

impl Validate for GatewayConfig {
    fn check(&self) -> Result<(), Invalid> {
        self.validate()
    }
}

/// Parses and validates a configuration from TOML text.
pub fn from_str<T>(text: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: for<'de> Deserialize<'de> + Validate,
{
    let cfg: T = toml::from_str(text).map_err(|e| de_error(text, file, &e))?;
    cfg.check().map_err(|inv| ConfigError {
        file: file.map(Path::to_path_buf),
        line: locate(text, &inv.path).map(|s| line_of(text, s.start)),
        key: Some(dotted(&inv.path)),
        message: inv.message,
    })?;
    Ok(cfg)
}

/// A deserialisation error of `text`, with the key and line it points at.
fn de_error(text: &str, file: Option<&Path>, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let mut key = span.as_ref().and_then(|s| key_at(text, s));
    let mut message = in_toml_words(e.message().trim());
    // `[[limits]]` where `[limits]` was meant: serde points at the first header, which
    // names `limits[0]`, but what is wrong is `limits` being an array.
    let at_header = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .is_some_and(|t| t.trim_start().starts_with("[["));
    if at_header && message.starts_with("invalid type: array,") {
        if let Some(k) = &mut key {
            if let Some(open) = k.rfind('[').filter(|_| k.ends_with(']')) {
                k.truncate(open);
            }
        }
        message = message.replacen("array", "array of tables", 1);
    }
    ConfigError {
        file: file.map(Path::to_path_buf),
        line: span.as_ref().map(|s| line_of(text, s.start)),
        key,
        message,
    }
}

/// serde's message for a value of the wrong kind, in the words of a TOML file: its
/// author wrote an array or a table, and is owed "a table", not `struct GatewayLink`,
/// and "a non-negative integer", not `usize` (the sections' own wording is
/// [`Table`]'s). Anything else is passed on unchanged.
fn in_toml_words(message: &str) -> String {
    let Some((found, expected)) = message.rsplit_once(", expected ") else {
        return message.to_string();
    };
    // An integer beyond 64 bits is read as an i128 and then refused as one: it is a
    // number out of range, not of another type.
    let too_big = found
        .strip_prefix("invalid type: integer `")
        .and_then(|r| r.strip_suffix("` as i128"))
        .map(|n| format!("invalid value: {n} is out of range"));
    let found = match found {
        _ if too_big.is_some() => too_big.as_deref().unwrap_or(found),
        "invalid type: sequence" => "invalid type: array",
        "invalid type: map" => "invalid type: table",
        other => other,
    };
    let expected = match expected {
        "a map" => "a table".to_string(),
        "a sequence" => "an array".to_string(),
        "usize" | "u64" | "u128" => "a non-negative integer".to_string(),
        "u8" => format!("an integer from 0 to {}", u8::MAX),
        "u16" => format!("an integer from 0 to {}", u16::MAX),
        "u32" => format!("an integer from 0 to {}", u32::MAX),
        "isize" | "i8" | "i16" | "i32" | "i64" | "i128" => "an integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        e if e.starts_with("struct ") => "a table".to_string(),
        e => e.to_string(),
    };
    format!("{found}, expected {expected}")
}

/// [`load`] of a router configuration whose `[gateway] url` is `url` (the command
/// line's `--gateway`), whatever the file says: the file needs no URL of its own, and a
/// wrong one there does not count. Errors are located as [`load`]'s.
pub fn load_router_with_url(path: &Path, url: &str) -> Result<RouterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    // The file's `url` is taken whatever it is (see [`GatewayUrl`]), so any error
    // here is about something else and keeps its line.
    let mut cfg: RouterConfig =
        toml::from_str(&text).map_err(|e| de_error(&text, Some(path), &e))?;
    cfg.gateway.url = GatewayUrl::from(url);
    cfg.check().map_err(|inv| ConfigError {
        file: Some(path.to_path_buf()),
        // The URL is the flag's, not a line of the file.
        line: (inv.path != ["gateway", "url"])
            .then(|| locate(&text, &inv.path).map(|s| line_of(&text, s.start)))
            .flatten(),
        key: Some(dotted(&inv.path)),
        message: inv.message,
    })?;
    Ok(cfg)
}

/// Reads, parses and validates a configuration file.
pub fn load<T>(path: &Path) -> Result<T, ConfigError>
where
    T: for<'de> Deserialize<'de> + Validate,
{
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_path_buf()),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    from_str(&text, Some(path))
}

/// An error about `key` (dotted, e.g. `auth.token_env`) of the file at `path`, found
/// after the file was loaded (a token that cannot be read): located to its line like
/// the errors [`load`] gives.
pub fn error_at(path: Option<&Path>, key: &str, message: String) -> ConfigError {
    let segments: Vec<String> = key.split('.').map(str::to_string).collect();
    let line = path
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| locate(&text, &segments).map(|s| line_of(&text, s.start)));
    ConfigError {
        file: path.map(Path::to_path_buf),
        line,
        key: Some(key.to_string()),
        message,
    }
}

fn dotted(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if seg.parse::<usize>().is_ok() {
            s.push_str(&format!("[{seg}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(seg);
        }
    }
    s
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

use toml::de::{DeTable, DeValue};

/// The span of the deepest element of `path` that exists in the document (the key when
/// it is present, else the nearest table above it that the file has: a missing `url`,
/// a default that fails a check).
fn locate(text: &str, path: &[String]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut table = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in path {
        if let Some(t) = table.take() {
            let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref() == seg) else {
                break;
            };
            best = Some(k.span());
            value = Some(v.get_ref());
        } else if let (Some(DeValue::Array(a)), Ok(i)) = (value, seg.parse::<usize>()) {
            let Some(item) = a.get(i) else {
                break;
            };
            best = Some(item.span());
            value = Some(item.get_ref());
        } else {
            break;
        }
        if let Some(DeValue::Table(t)) = value {
            table = Some(t);
        }
    }
    best
}

/// The dotted key path whose key or value contains `span` (for parse errors).
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let Ok(doc) = DeTable::parse(text) else {
        // A document that does not parse (a key or a table given twice): the key is the
        // text the error points at, under the table header above it.
        return key_by_text(text, span);
    };
    let mut path = Vec::new();
    if find_in_table(doc.get_ref(), span, &mut path) {
        return Some(dotted(&path));
    }
    key_by_text(text, span)
}

/// The dotted key at `span` read from the text: a table header's name, or a key under
/// the nearest header above (`[[t]]` counted, as `t[i]`).
fn key_by_text(text: &str, span: &Range<usize>) -> Option<String> {
    let name = text.get(span.clone())?.trim().trim_matches(['[', ']', ' ']);
    if name.is_empty() || name.contains('\n') {
        return None;
    }
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    if text[line_start..].trim_start().starts_with('[') {
        return Some(name.to_string());
    }
    let header = |l: &str| -> Option<(bool, String)> {
        let l = l.trim();
        let array = l.starts_with("[[");
        let inner = l
            .strip_prefix('[')?
            .split(']')
            .next()?
            .trim_start_matches('[');
        Some((array, inner.trim().to_string()))
    };
    let above = &text[..line_start];
    let Some((array, table)) = above.lines().rev().find_map(header) else {
        return Some(name.to_string());
    };
    if array {
        let index = above
            .lines()
            .filter_map(header)
            .filter(|(a, t)| *a && *t == table)
            .count()
            - 1;
        return Some(format!("{table}[{index}].{name}"));
    }
    Some(format!("{table}.{name}"))
}

fn covers(r: &Range<usize>, span: &Range<usize>) -> bool {
    r.start <= span.start && span.end <= r.end.max(r.start + 1)
}

/// Depth-first search for the entry covering `span`. Table spans cover only their
/// header, so every child is searched rather than pruning by the container's span.
fn find_in_table(t: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    for (k, v) in t.iter() {
        path.push(k.get_ref().to_string());
        if covers(&k.span(), span) || find_in_value(v.get_ref(), span, path) {
            return true;
        }
        if covers(&v.span(), span) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(v: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    match v {
        DeValue::Table(t) => find_in_table(t, span, path),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(i.to_string());
                if find_in_value(item.get_ref(), span, path) || covers(&item.span(), span) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[limits]
request_timeout = "5s"

[[backends]]
name = "one"
transport = "stdio"
command = "mcp-fixture"
args = ["--name", "one"]

[[backends]]
name = "two"
transport = "stdio"
command = "mcp-fixture"
session = "shared"
env = { A = "1" }
"#;

    #[test]
    fn parses_a_good_gateway_config_with_defaults() {
        let c: GatewayConfig = from_str(GOOD, None).unwrap();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].session, SessionMode::Shared);
        assert_eq!(c.backends[0].session, SessionMode::PerClient);
        assert_eq!(c.limits.max_in_flight, DEFAULT_SESSION_MAX_IN_FLIGHT);
        assert_eq!(c.limits.request_timeout.0, Duration::from_secs(5));
        assert_eq!(c.server.path, "/mcp");
        assert_eq!(c.server.send_timeout.0, DEFAULT_SEND_TIMEOUT);
        assert_eq!(c.server.ping_interval.0, DEFAULT_PING_INTERVAL);
        assert_eq!(c.request_timeout(&c.backends[0]), Duration::from_secs(5));
        let text = GOOD.replace("listen = ", "send_timeout = \"0ms\"\nlisten = ");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.send_timeout"), "{e}");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = GOOD.replace("session = \"shared\"", "sesion = \"shared\"");
        let e = from_str::<GatewayConfig>(&text, Some(Path::new("g.toml"))).unwrap_err();
        assert_eq!(e.line, Some(18));
        assert!(e.message.contains("sesion"), "{e}");
        assert!(e.to_string().starts_with("g.toml:18: "), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_enum_name_the_key() {
        let text = GOOD.replace("session = \"shared\"", "session = \"sometimes\"");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.line, Some(18));
        assert_eq!(e.key.as_deref(), Some("backends[1].session"), "{e}");
        let text = GOOD.replace(
            "request_timeout = \"5s\"",
            "request_timeout = \"5 parsecs\"",
        );
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.line, Some(6));
        assert_eq!(e.key.as_deref(), Some("limits.request_timeout"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_named_in_tomls_words() {
        let wrong = |from: &str, to: &str| {
            let text = GOOD.replace(from, to);
            let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
            (e.key.unwrap_or_default(), e.message)
        };
        let (key, message) = wrong("request_timeout = \"5s\"", "max_in_flight = \"x\"");
        assert_eq!(key, "limits.max_in_flight");
        assert_eq!(
            message,
            "invalid type: string \"x\", expected a non-negative integer"
        );
        let (key, message) = wrong("request_timeout = \"5s\"", "max_in_flight = -1");
        assert_eq!(key, "limits.max_in_flight");
        assert_eq!(
            message,
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        let (key, message) = wrong("args = [\"--name\", \"one\"]", "args = \"one\"");
        assert_eq!(key, "backends[0].args");
        assert_eq!(message, "invalid type: string \"one\", expected an array");
        let text = format!("limits = 5\n{}", GOOD.replace("[limits]", ""));
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        let (key, message) = (e.key.unwrap_or_default(), e.message);
        assert_eq!(key, "limits");
        assert_eq!(message, "invalid type: integer `5`, expected a table");
        let (key, message) = wrong("[limits]", "[[limits]]");
        assert_eq!(key, "limits");
        assert_eq!(message, "invalid type: array of tables, expected a table");
        // An array is no table, even one whose items would fill the fields in order.
        let text = format!("limits = [1048576]\n{}", GOOD.replace("[limits]", ""));
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits"), "{e}");
        assert_eq!(e.message, "invalid type: array, expected a table");
        let text = "backends = [[\"one\", \"stdio\", \"mcp-fixture\"]]\n";
        let e = from_str::<GatewayConfig>(text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backends[0]"), "{e}");
        assert_eq!(e.message, "invalid type: array, expected a table");
        let text = format!("auth = [\"T\"]\n{GOOD}");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("auth"), "{e}");
        assert_eq!(e.message, "invalid type: array, expected a table");
        for (text, key) in [
            ("gateway = 5\n", "gateway"),
            ("[[gateway]]\nurl = \"ws://g\"\n", "gateway"),
            ("tracing = [true]\n", "tracing"),
        ] {
            let e = from_str::<RouterConfig>(text, None).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.message.ends_with("expected a table"), "{e}");
        }
        let (key, message) = wrong("env = { A = \"1\" }", "env = [\"A=1\"]");
        assert_eq!(key, "backends[1].env");
        assert_eq!(message, "invalid type: array, expected a table");
        // What serde already says in words a TOML author knows passes unchanged.
        assert_eq!(
            in_toml_words("invalid type: integer `5`, expected a string"),
            "invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            in_toml_words("missing field `name`"),
            "missing field `name`"
        );
        let e = from_str::<GatewayConfig>(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 99999999999999999999\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.max_sessions"), "{e}");
        assert_eq!(
            e.message,
            "invalid value: 99999999999999999999 is out of range, expected a non-negative integer"
        );
    }

    #[test]
    fn an_empty_service_name_is_refused() {
        let e = from_str::<GatewayConfig>(
            "[server]\nlisten = \"127.0.0.1:0\"\n[tracing]\nservice_name = \" \"\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.service_name"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn an_admin_listener_on_the_servers_port_is_refused() {
        let with = |server: &str, admin: &str| {
            from_str::<GatewayConfig>(
                &format!("[server]\nlisten = \"{server}\"\n[admin]\nlisten = \"{admin}\"\n"),
                None,
            )
        };
        for (server, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::1]:8080", "[::]:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
            ("[::]:8080", "0.0.0.0:8080"),
        ] {
            let e = with(server, admin).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("admin.listen"), "{e}");
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.message.contains("[server] listen"), "{e}");
        }
        for (server, admin) in [
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8081"),
            ("0.0.0.0:8080", "[::1]:8080"),
        ] {
            assert!(with(server, admin).is_ok(), "{server} {admin}");
        }
    }

    #[test]
    fn validation_errors_name_the_key_and_line() {
        let text = GOOD.replace("name = \"two\"", "name = \"one\"");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backends[1].name"));
        assert_eq!(e.line, Some(15));
        assert!(e.message.contains("duplicate"));
        let text = GOOD.replace("127.0.0.1:0", "localhost");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.listen"));
        assert_eq!(e.line, Some(3));
        let text = GOOD.replace("name = \"one\"", "name = \"a.b\"");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert!(e.message.contains("letters"), "{e}");
        let text = format!(
            "[routing]\nseparator = \"_\"\n{}",
            GOOD.replace("\"one\"", "\"a_b\"")
        );
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert!(e.message.contains("separator"), "{e}");
        assert_eq!(e.key.as_deref(), Some("backends[0].name"));
        // At most MAX_BACKENDS backends.
        let many: String = (0..=MAX_BACKENDS)
            .map(|i| {
                format!("[[backends]]\nname = \"b{i}\"\ntransport = \"stdio\"\ncommand = \"x\"\n")
            })
            .collect();
        let e =
            from_str::<GatewayConfig>(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{many}"), None)
                .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backends"), "{e}");
        assert!(e.message.contains("at most 256"), "{e}");
        // What no program can be given: refused with the key, not at every start.
        for (from, to, key) in [
            (
                "\"--name\", \"one\"",
                "\"--name\", \"o\\u0000ne\"",
                "backends[0].args[1]",
            ),
            ("A = \"1\"", "\"A=B\" = \"1\"", "backends[1].env"),
            ("A = \"1\"", "\"\" = \"1\"", "backends[1].env"),
            ("A = \"1\"", "C = \"x\\u0000y\"", "backends[1].env.C"),
            (
                "command = \"mcp-fixture\"\nargs",
                "command = \"x\\u0000\"\nargs",
                "backends[0].command",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\npath = \"/a b?c\"",
                "server.path",
            ),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
            assert!(
                e.key.as_deref().is_some_and(|k| k.starts_with(key)),
                "{to}: {e}"
            );
            assert!(e.line.is_some(), "{to}: {e}");
        }
        // `fx_` + `__` + `whoami` would split as `fx` + `_whoami`.
        for (sep, name, ok) in [
            ("__", "fx_", false),
            ("__", "fx", true),
            ("-_", "a-", true),
            ("aba", "xab", false),
            ("aba", "xa", true),
        ] {
            let text = format!(
                "[routing]\nseparator = {sep:?}\n{}",
                GOOD.replace("\"one\"", &format!("{name:?}"))
            );
            let got = from_str::<GatewayConfig>(&text, None);
            assert_eq!(got.is_ok(), ok, "{sep} {name}: {got:?}");
            if got.is_ok() {
                let ns = crate::routing::Namespace::new(sep);
                let full = ns.prefix(name, "tool");
                assert_eq!(ns.split(&full, |b| b == name), Some((name, "tool")));
            }
        }
    }

    #[test]
    fn otlp_headers_must_be_sendable() {
        let with = |k: &str, v: &str| TracingConfig {
            otlp_headers: [(k.to_string(), v.to_string())].into_iter().collect(),
            ..TracingConfig::default()
        };
        assert!(with("x-api-key", "abc 123=").validate().is_ok());
        // An upper-case name is its lower-case gRPC key (HTTP/2 lowercases names).
        assert!(with("X-API-Key", "k").validate().is_ok());
        // HTTP tokens that are no gRPC metadata key: refused for gRPC (the default),
        // taken for OTLP/HTTP.
        for k in ["x-k%41", "x-q'", "x~y", "x|y", "x-key-bin"] {
            let e = with(k, "v").validate().unwrap_err();
            assert_eq!(e.path, ["tracing", "otlp_headers", k], "{}", e.message);
            assert!(e.message.contains("gRPC"), "{}", e.message);
            let http = TracingConfig {
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                ..with(k, "v")
            };
            http.validate().unwrap();
        }
        for (k, v) in [
            ("connection", "close"),
            ("Content-Type", "text/plain"),
            ("grpc-timeout", "1S"),
            ("bad name", "x"),
            ("", "x"),
            ("x-ok", "a\nInjected: 1"),
            ("x-ok", "caf\u{e9}"),
        ] {
            let e = with(k, v).validate().unwrap_err();
            assert_eq!(e.path, ["tracing", "otlp_headers", k], "{}", e.message);
        }
    }

    #[test]
    fn span_detail_is_full_unless_set() {
        let c = from_str::<GatewayConfig>(GOOD, None).unwrap();
        assert_eq!(c.tracing.span_detail, SpanDetail::Full);
        let text = format!("{GOOD}\n[tracing]\nspan_detail = \"basic\"\n");
        let c = from_str::<GatewayConfig>(&text, None).unwrap();
        assert_eq!(c.tracing.span_detail, SpanDetail::Basic);
        let text = format!("{GOOD}\n[tracing]\nspan_detail = \"verbose\"\n");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.span_detail"), "{e}");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn missing_required_key_is_reported() {
        let text = GOOD.replace("command = \"mcp-fixture\"\nsession", "session");
        let e = from_str::<GatewayConfig>(&text, None).unwrap_err();
        assert!(e.message.contains("command"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn a_url_from_the_command_line_replaces_the_files_and_other_errors_keep_their_lines() {
        let path =
            std::env::temp_dir().join(format!("mcp-config-test-{}.toml", std::process::id()));
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            load_router_with_url(&path, "ws://127.0.0.1:1/mcp")
        };
        for text in [
            "[logging]\nlevel = \"info\"\n",
            "[gateway]\nconnect_timeout = \"1s\"\n",
            "[gateway]\nurl = 5\n",
            "[gateway]\nurl = \"http://nope\"\n",
        ] {
            let c = load(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.gateway.url, "ws://127.0.0.1:1/mcp");
        }
        let e =
            load("[gateway]\nurl = \"ws://h/\"\n[limits]\nmax_in_flight = \"x\"\n").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("limits.max_in_flight"), Some(4)),
            "{e}"
        );
        let e = load("[limits]\n\nmax_in_flight = 0\n").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("limits.max_in_flight"), Some(3)),
            "{e}"
        );
        let e = load("[limits]\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        // What is not the URL is checked as without the flag.
        let e = load("gateway = 5\n").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("gateway"), Some(1)),
            "{e}"
        );
        let e = load("[gateway]\nurl = 5\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = load("[gateway]\nurl = 5\nconnect_timeout = \"1 parsec\"\n").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("gateway.connect_timeout"), Some(3)),
            "{e}"
        );
        std::fs::write(&path, "").unwrap();
        let e = load_router_with_url(&path, "http://x").unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("gateway.url"), None),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_key_or_table_given_twice_is_named() {
        for (text, key, line) in [
            ("[server]\nlisten = \"a\"\n[server]\npath = \"/x\"\n", "server", 3),
            ("[server]\nlisten = \"a\"\nlisten = \"b\"\n", "server.listen", 3),
            (
                "[[backends]]\nname = \"a\"\n[[backends]]\nname = \"b\"\ncommand = \"x\"\nname = \"c\"\n",
                "backends[1].name",
                6,
            ),
        ] {
            let e = from_str::<GatewayConfig>(text, None).unwrap_err();
            assert!(e.message.contains("duplicate"), "{e}");
            assert_eq!((e.key.as_deref(), e.line), (Some(key), Some(line)), "{text}");
        }
    }

    #[test]
    fn router_config() {
        let c: RouterConfig = from_str(
            "[gateway]\nurl = \"ws://127.0.0.1:1/mcp\"\ntoken_env = \"T\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.limits.max_in_flight, DEFAULT_ROUTER_MAX_IN_FLIGHT);
        let e = from_str::<RouterConfig>("[gateway]\nurl = \"http://x\"\n", None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway.url"));
        assert_eq!(e.line, Some(2));
        // Without the command line's URL, the file's must be there, and a string.
        for (text, line, says) in [
            ("[gateway]\n\nurl = 5\n", Some(3), "must be a string"),
            (
                "[gateway]\nurl = [\"ws://h\", {a = 1}]\n",
                Some(2),
                "must be a string",
            ),
            ("[gateway]\nurl = 1979-05-27\n", Some(2), "must be a string"),
            (
                "[gateway]\nurl.x = \"ws://h\"\n",
                Some(2),
                "must be a string",
            ),
            ("\n[gateway]\ntoken_env = \"T\"\n", Some(2), "missing"),
            ("[logging]\nlevel = \"info\"\n", None, "missing"),
        ] {
            let e = from_str::<RouterConfig>(text, None).unwrap_err();
            assert_eq!(
                (e.key.as_deref(), e.line),
                (Some("gateway.url"), line),
                "{text}: {e}"
            );
            assert!(e.message.starts_with(says), "{text}: {e}");
        }
        let e = from_str::<RouterConfig>("gateway = 5\n", None).unwrap_err();
        assert_eq!(
            (e.key.as_deref(), e.line),
            (Some("gateway"), Some(1)),
            "{e}"
        );
        // Credentials before the host: refused, without repeating them; a `/`, `?` or
        // `#` in the password makes what comes before it a port that is no number.
        for url in [
            "ws://alice:s3cret@h:1/mcp",
            "ws://s3cret@h?x=1",
            "ws://alice:ab/s3cret@h:1/mcp",
            "ws://alice:s3?cret@h",
            "ws://alice:s3#cret@h",
            "ws://h:0/mcp",
            "ws://[::1]:s3cret/x",
            "ws://:s3/cret@h:1/mcp",
            "ws://[]:s3/cret@h",
            "http://alice:s3cret@h/mcp",
            "WS://alice:s3cret@h/mcp",
            "ws://h h/mcp",
            "ws://h/m cp",
            "ws://h!/mcp",
            "ws://h:1:2/mcp",
        ] {
            let text = format!("[gateway]\nurl = \"{url}\"\n");
            let e = from_str::<RouterConfig>(&text, None).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("gateway.url"), "{e}");
            assert!(!e.to_string().contains("cret"), "{e}");
        }
        // An `@` after the host (in the path or query) is no credential; IPv6 hosts.
        for url in [
            "ws://h:1/a@b?c=d@e",
            "ws://[::1]:8443/mcp",
            "ws://[::1]/mcp",
            "ws://h",
            "ws://h:/mcp",
        ] {
            from_str::<RouterConfig>(&format!("[gateway]\nurl = \"{url}\"\n"), None).unwrap();
        }
        assert_eq!(
            redact_url_query("ws://h:1/mcp?access_token=abc&x&sig=1#f"),
            "ws://h:1/mcp?access_token=REDACTED&x&sig=REDACTED#f"
        );
        assert_eq!(redact_url_query("ws://h:1/mcp"), "ws://h:1/mcp");
        assert_eq!(split_authority("[::1]:8443"), ("::1", "8443"));
        assert_eq!(split_authority("[::1]"), ("::1", ""));
        assert_eq!(split_authority("h:"), ("h", ""));
        assert_eq!(split_authority("h"), ("h", ""));
        let e = from_str::<RouterConfig>(
            "[gateway]\nurl = \"ws://h/mcp\"\n[limits]\nmax_message_bytes = 10\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max_message_bytes"));
        assert_eq!(e.line, Some(4));
        assert_eq!(c.gateway.send_timeout.0, DEFAULT_SEND_TIMEOUT);
        assert_eq!(c.gateway.ping_interval.0, DEFAULT_PING_INTERVAL);
        // `[gateway]` with a URL and one more line.
        let with = |line: &str| {
            from_str::<RouterConfig>(&format!("[gateway]\nurl = \"ws://h/mcp\"\n{line}\n"), None)
        };
        let e = with("ping_interval = \"soon\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway.ping_interval"));
        let c = with("ping_interval = \"0s\"").unwrap();
        assert!(c.gateway.ping_interval.0.is_zero(), "zero means off");
        let c = with("send_timeout = \"250ms\"").unwrap();
        assert_eq!(c.gateway.send_timeout.0, Duration::from_millis(250));
        let e = with("send_timeout = \"0s\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway.send_timeout"));
        assert_eq!(e.line, Some(3));
        assert_eq!(c.gateway.reconnect_delay.0, DEFAULT_RECONNECT_DELAY);
        assert_eq!(c.gateway.reconnect_max_delay.0, DEFAULT_RECONNECT_MAX_DELAY);
        let c = with("reconnect_delay = \"0s\"").unwrap();
        assert!(c.gateway.reconnect_delay.0.is_zero(), "zero means never");
        let e = with("reconnect_delay = \"2s\"\nreconnect_max_delay = \"1s\"").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("gateway.reconnect_max_delay"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    /// A build with only the HTTP exporter takes it by default: a file that does not
    /// name a protocol is valid there, and `OTEL_EXPORTER_OTLP_PROTOCOL` may name it.
    #[test]
    #[cfg(all(feature = "otlp-http", not(feature = "otlp-grpc")))]
    fn a_build_with_only_http_defaults_to_it() {
        let c = from_str::<RouterConfig>(
            "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\nenabled = true\n",
            None,
        )
        .unwrap();
        assert_eq!(c.tracing.otlp_protocol, OtlpProtocol::HttpProtobuf);
    }

    /// A protocol without its exporter in the build is refused with the file, naming
    /// the key and line (not at the next start).
    #[test]
    #[cfg(not(all(feature = "otlp-grpc", feature = "otlp-http")))]
    fn a_protocol_left_out_of_the_build_is_a_config_error() {
        let proto = if cfg!(feature = "otlp-grpc") {
            "http/protobuf"
        } else {
            "grpc"
        };
        let text = format!(
            "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\nenabled = true\notlp_protocol = \"{proto}\"\n"
        );
        let e = from_str::<RouterConfig>(&text, None).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.otlp_protocol"), "{e}");
        assert!(e.to_string().contains("not built into this binary"), "{e}");
        // Off, or with the stdout exporter, it does not matter.
        let off = text.replace("enabled = true", "enabled = false");
        assert!(from_str::<RouterConfig>(&off, None).is_ok());
        let stdout = format!("{text}exporter_type = \"stdout\"\n");
        assert!(from_str::<RouterConfig>(&stdout, None).is_ok());
    }

    #[test]
    #[cfg(all(feature = "otlp-grpc", feature = "otlp-http"))]
    fn tracing_section() {
        let c: RouterConfig = from_str(
            "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\nenabled = true\nsampler_type = \"traceidratio\"\nsampler_param = 0.25\notlp_protocol = \"http/protobuf\"\notlp_headers = { x-api-key = \"k\" }\n",
            None,
        )
        .unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(c.tracing.sampler_type, SamplerType::TraceIdRatio);
        assert_eq!(c.tracing.otlp_protocol, OtlpProtocol::HttpProtobuf);
        let e = from_str::<RouterConfig>(
            "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\nsampler_param = 1.5\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.sampler_param"));
        assert_eq!(e.line, Some(4));
        let e = from_str::<RouterConfig>(
            "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\nexporter_type = \"jaeger\"\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.exporter_type"));
        // An endpoint the exporter could never connect to fails the check, not the start.
        for ep in [
            "http://collector:43l7",
            "http://",
            "http://[::1",
            "http://h h:4318",
        ] {
            let e = from_str::<RouterConfig>(
                &format!("[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\notlp_endpoint = \"{ep}\"\n"),
                None,
            )
            .unwrap_err();
            assert_eq!(e.key.as_deref(), Some("tracing.otlp_endpoint"), "{ep}");
            assert_eq!(e.line, Some(4), "{ep}");
        }
        if !cfg!(feature = "otlp-tls") {
            let e = from_str::<RouterConfig>(
                "[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\notlp_endpoint = \"c:4317\"\n",
                None,
            )
            .unwrap_err();
            assert!(e.to_string().contains("no scheme"), "{e}");
        }
    }

    #[test]
    // Tracing on with the OTLP exporters: needs both in the build.
    #[cfg(all(feature = "otlp-grpc", feature = "otlp-http"))]
    fn export_batch_size_is_the_binarys_unless_set() {
        let parse = |tracing: &str| {
            from_str::<RouterConfig>(
                &format!("[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\n{tracing}"),
                None,
            )
        };
        // Unset: each binary's default, no more than the queue holds.
        let c = parse("enabled = true\n").unwrap().tracing;
        assert_eq!(c.max_export_batch_size, None);
        assert_eq!(c.export_batch_size(DEFAULT_MAX_EXPORT_BATCH_SIZE), 128);
        assert_eq!(c.export_batch_size(GATEWAY_MAX_EXPORT_BATCH_SIZE), 512);
        let c = parse("max_queue_size = 300\n").unwrap().tracing;
        assert_eq!(c.export_batch_size(GATEWAY_MAX_EXPORT_BATCH_SIZE), 300);
        assert_eq!(c.export_batch_size(DEFAULT_MAX_EXPORT_BATCH_SIZE), 128);
        // Set: as written, for both.
        let c = parse("max_export_batch_size = 64\n").unwrap().tracing;
        assert_eq!(c.export_batch_size(GATEWAY_MAX_EXPORT_BATCH_SIZE), 64);
        // Set wrong: named, with its line.
        for bad in [
            "max_export_batch_size = 0\n",
            "max_queue_size = 100\nmax_export_batch_size = 200\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e.key.as_deref(),
                Some("tracing.max_export_batch_size"),
                "{bad}"
            );
            assert!(e.line.is_some(), "{bad}");
        }
    }
    #[test]
    fn tracing_tls_keys() {
        let tracing = |body: &str| {
            from_str::<RouterConfig>(
                &format!("[gateway]\nurl = \"ws://h/mcp\"\n[tracing]\n{body}"),
                None,
            )
        };
        // The scheme decides; otlp_insecure only checks it.
        let e = tracing("otlp_insecure = false\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.otlp_insecure"));
        assert!(e.message.contains("https://"), "{e}");
        tracing("otlp_insecure = true\n").unwrap();
        let e = tracing("otlp_endpoint = \"https://c:4317\"\notlp_insecure = true\n").unwrap_err();
        if cfg!(feature = "otlp-tls") {
            assert_eq!(e.key.as_deref(), Some("tracing.otlp_insecure"));
            assert!(e.message.contains("always TLS"), "{e}");
            let c = tracing(
                "otlp_endpoint = \"https://c:4317\"\notlp_insecure = false\notlp_certificate = \"/ca.pem\"\n",
            )
            .unwrap();
            let ca = c.tracing.otlp_certificate.unwrap();
            assert_eq!(ca.path, Path::new("/ca.pem"));
            assert_eq!(ca.origin, "tracing.otlp_certificate");
        } else {
            assert_eq!(e.key.as_deref(), Some("tracing.otlp_endpoint"));
            assert!(e.message.contains("`otlp-tls`"), "{e}");
        }
        // Named by the key that is there, with its line.
        let e = tracing("otlp_client_certificate = \"/c.pem\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.otlp_client_certificate"));
        assert!(
            e.line.is_some() && e.message.contains("otlp_client_key"),
            "{e}"
        );
        let e = tracing("otlp_client_key = \"/k.pem\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.otlp_client_key"));
        assert!(
            e.line.is_some() && e.message.contains("otlp_client_certificate"),
            "{e}"
        );
        let e = tracing("otlp_certificate = \"\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("tracing.otlp_certificate"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert!(parse_duration("1441m").is_err());
        assert!(
            parse_duration("18446744073709551615s").is_err(),
            "past the clock"
        );
    }
}
