//! mcp-shared: the sans-I/O core shared by `mcp-router` and `mcp-gateway`.
//!
//! Nothing in this crate opens a socket, spawns a process or touches stdin/stdout; it
//! turns bytes into messages and decisions, so unit tests can drive it directly.
//!
//! - [`jsonrpc`]: the message model (keeps unknown fields and exact ids).
//! - [`bytes`]: short copies without a `memcpy` call (musl's is slow for them).
//! - [`framing`]: newline-delimited framing with a size bound.
//! - [`idmap`]: id mapping tables for forwarded requests.
//! - [`routing`]: namespacing of tools/prompts, resource URI routes.
//! - [`mcp`]: protocol versions, method handling, capability merging.
//! - [`config`]: TOML configuration and validation.
//! - [`error`]: typed errors and their JSON-RPC codes.
//! - [`secret`]: tokens that never print.
//! - [`logger`]: the stderr logger.
//! - [`time`]: deadlines for futures.
//! - [`meter`]: byte counts on a connection (a stream wrapper, no I/O of its own), for
//!   timeouts that measure progress rather than whole messages.
//! - [`telemetry`]: OpenTelemetry tracing (the only part of this crate with I/O: its
//!   exporter thread talks to the collector).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod config;
pub mod error;
pub mod framing;
pub mod idmap;
pub mod jsonrpc;
pub mod logger;
pub mod mcp;
pub mod meter;
pub mod routing;
pub mod secret;
pub mod telemetry;
pub mod time;

/// Version of the workspace, for `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git commit the build came from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("MCP_BRIDGE_GIT_COMMIT");

/// What this build can do (cargo features), for `--version`.
pub fn features() -> String {
    let mut f = Vec::new();
    if cfg!(feature = "otlp-grpc") {
        f.push("otlp-grpc");
    }
    if cfg!(feature = "otlp-http") {
        f.push("otlp-http");
    }
    f.push("stdout-exporter");
    // TLS is only ever to the collector (the WebSocket link has none).
    let tls = if cfg!(feature = "otlp-tls") {
        "otlp (rustls, ring)"
    } else {
        "no"
    };
    format!("{}; tls: {tls}", f.join(", "))
}

/// The `--version` line of a binary.
pub fn version_line(binary: &str) -> String {
    format!("{binary} {VERSION} (commit {GIT_COMMIT}; {})", features())
}
