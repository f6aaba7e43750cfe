//! `mcp-router`: an MCP server on stdio that relays every message to an `mcp-gateway`
//! over one WebSocket, and everything the gateway sends back to stdout.
//!
//! Only this binary reads stdin; its stdout carries MCP messages and nothing else (logs
//! go to stderr). See `ARCHITECTURE.md` for the invariants.
#![forbid(unsafe_code)]

mod link;
mod relay;
mod replay;
mod stdio;

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use mcp_shared::config::{self, RouterConfig, EXIT_CONFIG};

/// Relay an MCP client on stdio to an mcp-gateway over WebSocket.
#[derive(FromArgs)]
struct Args {
    /// path to the TOML configuration file
    #[argh(option)]
    config: Option<PathBuf>,
    /// gateway URL (ws://host:port/mcp), to run without a configuration file
    #[argh(option)]
    gateway: Option<String>,
    /// validate the configuration and exit (0 valid, 64 invalid)
    #[argh(switch)]
    check_config: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("{}", mcp_shared::version_line("mcp-router"));
        return ExitCode::SUCCESS;
    }
    let mut cfg = match load_config(&args) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("mcp-router: {msg}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if let Err(msg) = mcp_shared::telemetry::apply_env(&mut cfg.tracing, |k| std::env::var(k).ok())
    {
        eprintln!("mcp-router: {msg}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    if args.check_config {
        // stdout is the MCP channel, even here: report on stderr.
        eprintln!("mcp-router: configuration is valid");
        return ExitCode::SUCCESS;
    }
    mcp_shared::logger::init(cfg.logging.level.filter(), cfg.logging.format);
    let token = match mcp_shared::secret::load(
        cfg.gateway.token_env.as_deref(),
        cfg.gateway.token_file.as_deref(),
    ) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("mcp-router: gateway token: {msg}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let tel = match mcp_shared::telemetry::Telemetry::init(
        &cfg.tracing,
        "mcp-router",
        mcp_shared::VERSION,
        mcp_shared::telemetry::Target::Stderr,
        mcp_shared::config::DEFAULT_MAX_EXPORT_BATCH_SIZE,
    ) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("mcp-router: tracing: {msg}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let code = match relay::run(cfg, token, tel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    // The last lines (the error, the shutdown's) are still in the logger's backlog.
    mcp_shared::logger::flush();
    code
}

fn load_config(args: &Args) -> Result<RouterConfig, String> {
    match (&args.config, &args.gateway) {
        (Some(path), gw) => {
            let mut c: RouterConfig = config::load(path).map_err(|e| e.to_string())?;
            if let Some(url) = gw {
                c.gateway.url = url.clone();
                c.validate().map_err(|e| e.message)?;
            }
            Ok(c)
        }
        (None, Some(url)) => {
            let c = RouterConfig::with_url(url);
            c.validate()
                .map_err(|e| format!("--gateway: {}", e.message))?;
            Ok(c)
        }
        (None, None) => Err("give --config FILE or --gateway URL (see --help)".into()),
    }
}
