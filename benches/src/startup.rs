//! Startup to ready: spawn a command, time until a line of its stderr contains the
//! readiness text (the gateway's `listening on`), read its memory at that moment, kill
//! it. Repeated; the median is the result.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::procfs;

/// One start: time to the readiness line and the RSS then (KiB).
struct Start {
    ready: Duration,
    rss_kb: Option<u64>,
}

/// Starts `cmd` `runs` times; fails if a start does not print `ready` within `timeout`.
pub fn run(
    cmd: &[String],
    runs: usize,
    ready: &str,
    timeout: Duration,
    label: &str,
) -> Result<Value, String> {
    let (program, args) = cmd.split_first().ok_or("no command given")?;
    let mut starts = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        starts.push(start_once(program, args, ready, timeout)?);
    }
    let mut ms: Vec<f64> = starts.iter().map(|s| s.ready.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mut rss: Vec<u64> = starts.iter().filter_map(|s| s.rss_kb).collect();
    rss.sort_unstable();
    let round = |v: f64| (v * 1e3).round() / 1e3;
    Ok(json!({
        "label": label,
        "mode": "startup",
        "target": cmd.join(" "),
        "runs": ms.len(),
        "median_ms": round(ms[ms.len() / 2]),
        "min_ms": round(ms[0]),
        "max_ms": round(ms[ms.len() - 1]),
        "rss_ready_kb": rss.get(rss.len() / 2),
        "name": program.rsplit('/').next().unwrap_or(program),
    }))
}

fn start_once(
    program: &str,
    args: &[String],
    ready: &str,
    timeout: Duration,
) -> Result<Start, String> {
    let t0 = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    // A thread reads stderr (to its end, so the child never blocks on it) and reports
    // the moment the readiness line arrives.
    let (tx, rx) = mpsc::channel();
    let ready_text = ready.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !seen && line.contains(&ready_text) {
                seen = true;
                let _ = tx.send(Instant::now());
            }
        }
    });
    let outcome = match rx.recv_timeout(timeout) {
        Ok(at) => Ok(Start {
            ready: at - t0,
            rss_kb: procfs::mem(child.id()).map(|m| m.rss_kb),
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "{program}: not ready within {} ms",
            timeout.as_millis()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("{program}: exited before it was ready"))
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    outcome
}
