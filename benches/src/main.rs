//! `mcp-bench`: the load generator and benchmark harness of mcp-bridge.
//!
//! ```text
//! mcp-bench stdio --cmd PROG [OPTIONS] [-- ARGS…]   MCP over the stdio of a spawned PROG
//! mcp-bench ws --url ws://HOST:PORT/mcp [OPTIONS]   MCP over a WebSocket (subprotocol mcp)
//! mcp-bench echo-floor [OPTIONS]                    raw loopback WebSocket echo (one hop)
//! mcp-bench sessions --url URL -s S [OPTIONS]       S idle sessions and a trickle
//! mcp-bench startup [OPTIONS] -- PROG ARGS…         spawn → readiness line, median of runs
//! mcp-bench otlp-sink [--listen ADDR]              OTLP/HTTP trace sink (prints its URL)
//! mcp-bench otlp-stats --sink NAME=URL [OPTIONS]    payload bytes per span, once settled
//! mcp-bench span-cost [-n N] [--rounds R]           ns per span: off, sampled, unsampled
//! mcp-bench report FILE                             markdown table from the results
//! ```
//!
//! The load modes perform `initialize` + `notifications/initialized` (not `echo-floor`,
//! whose server is no MCP server), a warm-up, then N `tools/call` requests with C in
//! flight and P bytes of text each, and report count, errors, throughput, p50/p90/p99/max
//! latency in µs and the RSS (current, peak) of the spawned child and of every `--pid`.
//!
//! Every measuring command prints one JSON object on one line on stdout; `run.sh`
//! collects them and `report` turns them into the table. Exit status: 0 when the run
//! completed (even if a budget is missed), 1 when the harness could not run, 2 when a
//! load run completed but some responses were errors (the numbers are not valid then).
#![forbid(unsafe_code)]

mod load;
mod mcp;
mod otlp;
mod procfs;
mod report;
mod sessions;
mod spancost;
mod startup;

use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use serde_json::Value;

/// Load generator and benchmark harness for mcp-router and mcp-gateway.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Stdio(StdioArgs),
    Ws(WsArgs),
    EchoFloor(EchoFloorArgs),
    Sessions(SessionsArgs),
    Startup(StartupArgs),
    OtlpSink(OtlpSinkArgs),
    OtlpStats(OtlpStatsArgs),
    SpanCost(SpanCostArgs),
    Report(ReportArgs),
}

/// Declares a load subcommand: its own fields plus the options every load mode shares.
macro_rules! load_command {
    ($(#[$meta:meta])* struct $name:ident { $($fields:tt)* }) => {
        #[derive(FromArgs)]
        $(#[$meta])*
        struct $name {
            $($fields)*
            /// requests measured (default 10000)
            #[argh(option, short = 'n', default = "10_000")]
            requests: u64,
            /// requests in flight at once (default 1)
            #[argh(option, short = 'c', default = "1")]
            concurrency: usize,
            /// bytes of text per request (default 128)
            #[argh(option, short = 'p', default = "128")]
            payload: usize,
            /// tool to call (default echo; fx.echo through a gateway with backend fx)
            #[argh(option, default = "String::from(\"echo\")")]
            tool: String,
            /// the tool's string argument that carries the payload (default text, as
            /// the fixture's echo; server-everything's echo takes message)
            #[argh(option, default = "String::from(\"text\")")]
            arg: String,
            /// unmeasured requests sent first (default 1000)
            #[argh(option, default = "1000")]
            warmup: u64,
            /// also report the memory of this process (repeatable)
            #[argh(option)]
            pid: Vec<u32>,
            /// name of the run in the output
            #[argh(option, default = "String::new()")]
            label: String,
            /// give up after this many seconds (default 300)
            #[argh(option, default = "300")]
            timeout_s: u64,
        }

        impl $name {
            fn opts(&self) -> load::Opts {
                load::Opts {
                    requests: self.requests,
                    concurrency: self.concurrency.max(1),
                    payload: self.payload,
                    tool: self.tool.clone(),
                    arg: self.arg.clone(),
                    warmup: self.warmup,
                    pids: self.pid.clone(),
                    label: self.label.clone(),
                    timeout: Duration::from_secs(self.timeout_s),
                }
            }
        }
    };
}

load_command! {
    /// MCP over the stdin/stdout of a spawned command (`-- ARGS` are its arguments).
    #[argh(subcommand, name = "stdio")]
    struct StdioArgs {
        /// the program to spawn
        #[argh(option)]
        cmd: String,
        /// its arguments (after `--`)
        #[argh(positional, greedy)]
        args: Vec<String>,
    }
}

load_command! {
    /// MCP over a WebSocket with subprotocol `mcp`.
    #[argh(subcommand, name = "ws")]
    struct WsArgs {
        /// ws://HOST:PORT/PATH
        #[argh(option)]
        url: String,
        /// while the port refuses connections, keep trying this long (default 0)
        #[argh(option, default = "0")]
        connect_wait_ms: u64,
    }
}

load_command! {
    /// The one-hop floor: a raw loopback WebSocket echo server (own thread) and client.
    #[argh(subcommand, name = "echo-floor")]
    struct EchoFloorArgs {}
}

/// Many idle WebSocket sessions, each initialized, with a trickle of requests.
#[derive(FromArgs)]
#[argh(subcommand, name = "sessions")]
struct SessionsArgs {
    /// ws://HOST:PORT/PATH
    #[argh(option)]
    url: String,
    /// sessions to open and hold (default 1000)
    #[argh(option, short = 's', default = "1000")]
    sessions: usize,
    /// handshakes in progress at once, at most (default 64)
    #[argh(option, default = "64")]
    connect_concurrency: usize,
    /// requests of the trickle, round robin over the sessions (default 200)
    #[argh(option, default = "200")]
    trickle: u64,
    /// trickle rate in requests per second (default 200)
    #[argh(option, default = "200.0")]
    rate: f64,
    /// tool to call (default fx.echo)
    #[argh(option, default = "String::from(\"fx.echo\")")]
    tool: String,
    /// bytes of text per request (default 128)
    #[argh(option, short = 'p', default = "128")]
    payload: usize,
    /// report the memory of this process (repeatable; the first one is the gateway)
    #[argh(option)]
    pid: Vec<u32>,
    /// name of the run in the output
    #[argh(option, default = "String::new()")]
    label: String,
    /// give up after this many seconds (default 600)
    #[argh(option, default = "600")]
    timeout_s: u64,
}

/// Time from spawning a command to its readiness line on stderr; median of runs.
#[derive(FromArgs)]
#[argh(subcommand, name = "startup")]
struct StartupArgs {
    /// starts measured (default 11)
    #[argh(option, default = "11")]
    runs: usize,
    /// text of the readiness line (default "listening on")
    #[argh(option, default = "String::from(\"listening on\")")]
    ready: String,
    /// give up on a start after this many milliseconds (default 10000)
    #[argh(option, default = "10_000")]
    timeout_ms: u64,
    /// name of the run in the output
    #[argh(option, default = "String::new()")]
    label: String,
    /// the command and its arguments (after `--`)
    #[argh(positional, greedy)]
    cmd: Vec<String>,
}

/// An OTLP/HTTP trace sink: counts what `POST /v1/traces` receives, answers 200 with an
/// empty response; `GET /stats` returns the counters, `POST /reset` zeroes them. Prints
/// its URL (`http://HOST:PORT`) on stdout once it listens, then serves until killed.
#[derive(FromArgs)]
#[argh(subcommand, name = "otlp-sink")]
struct OtlpSinkArgs {
    /// address to listen on (default 127.0.0.1:0)
    #[argh(option, default = "String::from(\"127.0.0.1:0\")")]
    listen: String,
}

/// Waits until the sinks (and the gateway's span counters) stop moving, then prints the
/// OTLP payload bytes per span; or, with `--reset`, zeroes the sinks' counters.
#[derive(FromArgs)]
#[argh(subcommand, name = "otlp-stats")]
struct OtlpStatsArgs {
    /// a sink as NAME=URL (repeatable; the one named `gateway` takes its span count
    /// from --admin when given)
    #[argh(option)]
    sink: Vec<String>,
    /// the gateway's admin URL (http://HOST:PORT), for its span counters
    #[argh(option)]
    admin: Option<String>,
    /// requests the load sent, warm-up included (for spans per request)
    #[argh(option, default = "0")]
    requests: u64,
    /// settled when nothing moved for this many ms (default 1500)
    #[argh(option, default = "1500")]
    quiet_ms: u64,
    /// stop waiting after this many ms and report what is there (default 20000)
    #[argh(option, default = "20_000")]
    timeout_ms: u64,
    /// only zero the sinks' counters (prints nothing)
    #[argh(switch)]
    reset: bool,
    /// name of the run in the output
    #[argh(option, default = "String::new()")]
    label: String,
}

/// The cost of one span (start + end) through the bridge's telemetry: tracing disabled,
/// sampled (always_on; exported over OTLP/HTTP to an in-process sink after the timed
/// loop, and again while it runs) and unsampled (traceidratio 0.0); median over
/// interleaved rounds.
#[derive(FromArgs)]
#[argh(subcommand, name = "span-cost")]
struct SpanCostArgs {
    /// spans per mode and round, at most 50000 (default 50000)
    #[argh(option, short = 'n', default = "50_000")]
    spans: u64,
    /// measured rounds, after one of warm-up (default 7)
    #[argh(option, default = "7")]
    rounds: usize,
    /// name of the run in the output
    #[argh(option, default = "String::new()")]
    label: String,
}

/// Prints the markdown table for a file of results (one JSON object per line).
#[derive(FromArgs)]
#[argh(subcommand, name = "report")]
struct ReportArgs {
    /// the results file
    #[argh(positional)]
    file: String,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let result = match args.command {
        Command::Stdio(a) => smol::block_on(async {
            let conn = mcp::Conn::spawn(&a.cmd, &a.args)?;
            load::run(conn, &a.opts(), "stdio", &a.cmd, false).await
        }),
        Command::Ws(a) => smol::block_on(async {
            let conn = mcp::Conn::connect(&a.url, Duration::from_millis(a.connect_wait_ms)).await?;
            load::run(conn, &a.opts(), "ws", &a.url, false).await
        }),
        Command::EchoFloor(a) => load::start_echo_server().and_then(|url| {
            smol::block_on(async {
                let conn = mcp::Conn::connect(&url, Duration::ZERO).await?;
                load::run(conn, &a.opts(), "echo-floor", &url, true).await
            })
        }),
        Command::Sessions(a) => {
            let opts = sessions::Opts {
                url: a.url,
                sessions: a.sessions,
                connect_concurrency: a.connect_concurrency,
                trickle: a.trickle,
                rate: a.rate,
                tool: a.tool,
                payload: a.payload,
                pids: a.pid,
                label: a.label,
                timeout: Duration::from_secs(a.timeout_s),
            };
            let ex = smol::LocalExecutor::new();
            smol::block_on(ex.run(sessions::run(&ex, &opts)))
        }
        Command::Startup(a) => startup::run(
            &a.cmd,
            a.runs,
            &a.ready,
            Duration::from_millis(a.timeout_ms),
            &a.label,
        ),
        Command::OtlpSink(a) => {
            let (listener, url) = match otlp::bind(&a.listen) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("mcp-bench: otlp-sink: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{url}");
            otlp::serve(listener, Default::default());
            return ExitCode::SUCCESS;
        }
        Command::OtlpStats(a) => {
            let sinks: Result<Vec<(String, String)>, String> = a
                .sink
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(n, u)| (n.to_string(), u.to_string()))
                        .ok_or_else(|| format!("--sink {s}: expected NAME=URL"))
                })
                .collect();
            match sinks {
                Ok(sinks) if a.reset => {
                    return match smol::block_on(otlp::reset(&sinks)) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("mcp-bench: {e}");
                            ExitCode::FAILURE
                        }
                    };
                }
                Ok(sinks) => smol::block_on(otlp::settle(&otlp::SettleOpts {
                    sinks,
                    admin: a.admin,
                    requests: a.requests,
                    quiet: Duration::from_millis(a.quiet_ms),
                    timeout: Duration::from_millis(a.timeout_ms),
                    label: a.label,
                })),
                Err(e) => Err(e),
            }
        }
        Command::SpanCost(a) => spancost::run(a.spans, a.rounds, &a.label),
        Command::Report(a) => {
            return match report::run(&a.file) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcp-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    match result {
        Ok(v) => {
            println!("{v}");
            if v["mode"] != "sessions" && v["errors"].as_u64().unwrap_or(0) > 0 {
                eprintln!(
                    "mcp-bench: {}: {} error response(s), first: {}",
                    v["label"], v["errors"], v["first_error"]
                );
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A number field of a result, if present.
pub fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}
