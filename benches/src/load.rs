//! Closed-loop load on one connection: keep C `tools/call` requests in flight until N
//! responses came back; latency is measured per request from just before it is written
//! to the moment its response is read and parsed.
//!
//! Also the raw WebSocket echo server behind `echo-floor`: a loopback server on its own
//! thread that sends every message straight back, so the client code is the same as for
//! the real targets and the difference is the bridge.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::HeaderValue;
use serde_json::{json, Value};
use smol::stream::StreamExt;

use crate::mcp::{self, Conn, Incoming, Requests};
use crate::procfs::{self, Watched};

/// What to run on a connection.
pub struct Opts {
    /// Requests measured.
    pub requests: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Bytes of text per request.
    pub payload: usize,
    /// Tool called.
    pub tool: String,
    /// The tool's argument that carries the payload.
    pub arg: String,
    /// Unmeasured requests sent first.
    pub warmup: u64,
    /// Other processes whose memory is reported.
    pub pids: Vec<u32>,
    /// Name of the run in the output.
    pub label: String,
    /// The whole run must finish within this.
    pub timeout: Duration,
}

/// The result of one closed loop.
pub struct Outcome {
    /// Latency of each response, ns, in arrival order.
    pub latencies_ns: Vec<u64>,
    /// Responses that were errors.
    pub errors: u64,
    /// The first error response, shortened.
    pub first_error: Option<String>,
    /// From the first request written to the last response read.
    pub elapsed: Duration,
}

/// Sends `count` requests with ids `first_id…`, `concurrency` in flight at once, and
/// waits for every response. `echo` accepts our own requests sent back as responses.
pub async fn closed_loop(
    conn: &mut Conn,
    reqs: &Requests,
    first_id: u64,
    count: u64,
    concurrency: usize,
    echo: bool,
) -> Result<Outcome, String> {
    let mut sent_at: Vec<Option<Instant>> = vec![None; count as usize];
    let mut out = Outcome {
        latencies_ns: Vec::with_capacity(count as usize),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let mut buf = String::new();
    let mut sent = 0u64;
    let start = Instant::now();
    while sent < count && sent < concurrency as u64 {
        reqs.build(first_id + sent, &mut buf);
        sent_at[sent as usize] = Some(Instant::now());
        conn.send(&buf).await?;
        sent += 1;
    }
    let mut done = 0u64;
    while done < count {
        let text = conn
            .recv()
            .await?
            .ok_or_else(|| format!("connection closed after {done} of {count} responses"))?;
        let Incoming::Response { id, ok } = mcp::classify(&text, echo) else {
            continue;
        };
        let slot = id
            .checked_sub(first_id)
            .and_then(|i| sent_at.get_mut(usize::try_from(i).ok()?));
        let Some(started) = slot.and_then(Option::take) else {
            continue;
        };
        out.latencies_ns.push(started.elapsed().as_nanos() as u64);
        done += 1;
        if !ok {
            out.errors += 1;
            if out.first_error.is_none() {
                out.first_error = Some(text.trim().chars().take(300).collect());
            }
        }
        if sent < count {
            reqs.build(first_id + sent, &mut buf);
            sent_at[sent as usize] = Some(Instant::now());
            conn.send(&buf).await?;
            sent += 1;
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// Latency percentiles (nearest rank) in µs: `p50_us`, `p90_us`, `p99_us`, `max_us`,
/// `mean_us`. Sorts `ns`.
pub fn percentiles(ns: &mut [u64]) -> Value {
    if ns.is_empty() {
        return json!({ "p50_us": null, "p90_us": null, "p99_us": null, "max_us": null, "mean_us": null });
    }
    ns.sort_unstable();
    let us = |v: u64| (v as f64 / 100.0).round() / 10.0;
    let rank = |p: f64| {
        let i = ((p / 100.0) * ns.len() as f64).ceil() as usize;
        ns[i.clamp(1, ns.len()) - 1]
    };
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64;
    json!({
        "p50_us": us(rank(50.0)),
        "p90_us": us(rank(90.0)),
        "p99_us": us(rank(99.0)),
        "max_us": us(*ns.last().expect("not empty")),
        "mean_us": (mean / 100.0).round() / 10.0,
    })
}

/// Runs the benchmark on `conn`: handshake (unless `echo`), warm-up, measured loop.
/// Returns the JSON result; `Err` if the harness could not finish.
pub async fn run(
    mut conn: Conn,
    opts: &Opts,
    mode: &str,
    target: &str,
    echo: bool,
) -> Result<Value, String> {
    let work = async {
        let mut procs: Vec<Watched> = conn
            .pid()
            .into_iter()
            .chain(opts.pids.iter().copied())
            .map(Watched::new)
            .collect();
        if !echo {
            mcp::initialize(&mut conn).await?;
        }
        procfs::sample_all(&mut procs, "init");
        let reqs = Requests::new(&opts.tool, &opts.arg, opts.payload);
        let warm = closed_loop(&mut conn, &reqs, 1, opts.warmup, opts.concurrency, echo).await?;
        procfs::sample_all(&mut procs, "start");
        let first = 1 + opts.warmup;
        let mut m = closed_loop(
            &mut conn,
            &reqs,
            first,
            opts.requests,
            opts.concurrency,
            echo,
        )
        .await?;
        procfs::sample_all(&mut procs, "end");
        conn.close().await;
        let secs = m.elapsed.as_secs_f64();
        let mut out = json!({
            "label": opts.label,
            "mode": mode,
            "target": target,
            "tool": opts.tool,
            "requests": opts.requests,
            "concurrency": opts.concurrency,
            "payload": opts.payload,
            "warmup": opts.warmup,
            "ok": m.latencies_ns.len() as u64 - m.errors,
            "errors": m.errors + warm.errors,
            "first_error": m.first_error.or(warm.first_error),
            "secs": (secs * 1e4).round() / 1e4,
            "rps": if secs > 0.0 { (m.latencies_ns.len() as f64 / secs).round() } else { 0.0 },
        });
        let lat = percentiles(&mut m.latencies_ns);
        merge(&mut out, lat);
        // CPU per measured request of each process (all its threads, e.g. a span
        // exporter's, included); 10 ms resolution, so meaningful for runs of seconds.
        for p in &procs {
            if let Some(ms) = p.cpu_between("start", "end") {
                let per = ms * 1e3 / opts.requests.max(1) as f64;
                out[format!("cpu_us_per_request_{}", p.name())] =
                    ((per * 100.0).round() / 100.0).into();
            }
        }
        out["procs"] = procs.iter().map(Watched::to_json).collect();
        Ok(out)
    };
    mcp_shared::time::timeout(opts.timeout, work)
        .await
        .unwrap_or_else(|| {
            Err(format!(
                "did not finish within {} s",
                opts.timeout.as_secs()
            ))
        })
}

/// Copies the fields of object `from` into object `into`.
pub fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// Starts the raw echo server on a thread of its own; returns its `ws://` URL. It serves
/// one connection at a time and lives until the process exits.
pub fn start_echo_server() -> Result<String, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("echo server: bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let listener =
        smol::net::TcpListener::try_from(listener).map_err(|e| format!("echo server: {e}"))?;
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || smol::block_on(serve_echo(listener)))
        .map_err(|e| format!("echo server thread: {e}"))?;
    Ok(format!("ws://{addr}/mcp"))
}

/// The same handshake work as the gateway: select the subprotocol `mcp`.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn select_mcp(_: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
    Ok(resp)
}

async fn serve_echo(listener: smol::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        stream.set_nodelay(true).ok();
        let Ok(mut ws) = async_tungstenite::accept_hdr_async_with_config(
            stream,
            select_mcp,
            Some(mcp::ws_config()),
        )
        .await
        else {
            continue;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut ns: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let p = percentiles(&mut ns);
        assert_eq!(p["p50_us"], 50.0);
        assert_eq!(p["p90_us"], 90.0);
        assert_eq!(p["p99_us"], 99.0);
        assert_eq!(p["max_us"], 100.0);
        assert_eq!(p["mean_us"], 50.5);
    }

    #[test]
    fn echo_floor_round_trips() {
        let url = start_echo_server().unwrap();
        let opts = Opts {
            requests: 50,
            concurrency: 4,
            payload: 16,
            tool: "echo".into(),
            arg: "text".into(),
            warmup: 5,
            pids: vec![],
            label: "t".into(),
            timeout: Duration::from_secs(20),
        };
        let v = smol::block_on(async {
            let conn = Conn::connect(&url, Duration::ZERO).await?;
            run(conn, &opts, "echo-floor", &url, true).await
        })
        .unwrap();
        assert_eq!(v["ok"], 50);
        assert_eq!(v["errors"], 0);
    }
}
