//! `mcp-router`: an MCP server on stdio that relays every message to an `mcp-gateway`
//! over one WebSocket, and everything the gateway sends back to stdout.
//!
//! Only this binary reads stdin; its stdout carries MCP messages and nothing else (logs
//! go to stderr). See `ARCHITECTURE.md` for the invariants.
#![forbid(unsafe_code)]

mod link;
mod queue;
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
    // Not `argh::from_env`: a bad command line is a usage error (64), like a bad file.
    let argv: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = match Args::from_args(&strs[..1], &strs[1..]) {
        Ok(a) => a,
        Err(early) if early.status.is_ok() => {
            // --help: stdout is the MCP channel only once the relay runs.
            print!("{}", early.output);
            return ExitCode::SUCCESS;
        }
        Err(early) => {
            eprint!("mcp-router: {}", early.output);
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
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
    if let Err(msg) =
        mcp_shared::telemetry::apply_env_when_enabled(&mut cfg.tracing, |k| std::env::var(k).ok())
    {
        eprintln!("mcp-router: {msg}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    if let Err(msg) = mcp_shared::logger::env_level() {
        eprintln!("mcp-router: {msg}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    // Loaded before --check-config answers: a token that cannot be read makes the
    // configuration unusable.
    let token = match mcp_shared::secret::load(
        cfg.gateway.token_env.as_deref(),
        cfg.gateway.token_file.as_deref(),
    ) {
        Ok(t) => t,
        Err(msg) => {
            let key = if cfg.gateway.token_env.is_some() {
                "gateway.token_env"
            } else {
                "gateway.token_file"
            };
            let e = mcp_shared::config::error_at(args.config.as_deref(), key, msg);
            eprintln!("mcp-router: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if args.check_config {
        // stdout is the MCP channel, even here: report on stderr.
        eprintln!("mcp-router: configuration is valid");
        return ExitCode::SUCCESS;
    }
    mcp_shared::logger::init(cfg.logging.level.filter(), cfg.logging.format);
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
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    // The last lines (the error, the shutdown's) are still in the logger's backlog
    // (at most 1 s for a stderr that takes nothing, even after a second SIGTERM).
    mcp_shared::logger::flush();
    code
}

fn load_config(args: &Args) -> Result<RouterConfig, String> {
    match (&args.config, &args.gateway) {
        (Some(path), None) => config::load(path).map_err(|e| e.to_string()),
        // The flag's URL replaces the file's (which may then be absent or wrong).
        (Some(path), Some(url)) => config::load_router_with_url(path, url).map_err(|e| {
            // The flag's URL failed its check (no line: it is not the file's); an error
            // with a line is the file's (a `url` given twice).
            if e.key.as_deref() == Some("gateway.url") && e.line.is_none() {
                format!("--gateway: {}", e.message)
            } else {
                e.to_string()
            }
        }),
        (None, Some(url)) => {
            let c = RouterConfig::with_url(url);
            c.validate()
                .map_err(|e| format!("--gateway: {}", e.message))?;
            Ok(c)
        }
        (None, None) => Err("give --config FILE or --gateway URL (see --help)".into()),
    }
}
