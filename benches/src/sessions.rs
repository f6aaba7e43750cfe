//! Many-session mode: S WebSocket sessions opened (at most K handshakes at a time) and
//! initialized, held open, then a trickle of requests spread over them, then closed.
//!
//! The memory of the watched processes is sampled before any session, after the first
//! one, after all of them, and after the trickle; the cost of one more idle session is
//! `(RSS with all - RSS with one) / (opened - 1)`, so one-time costs of the first
//! session (e.g. starting a shared backend) are not counted per session.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smol::channel::{self, Receiver, Sender};
use smol::lock::Semaphore;
use smol::LocalExecutor;

use crate::load;
use crate::mcp::{self, Conn, Requests};
use crate::procfs::{self, Watched};

/// What to run.
pub struct Opts {
    /// Gateway URL.
    pub url: String,
    /// Sessions to open.
    pub sessions: usize,
    /// Handshakes in progress at once, at most.
    pub connect_concurrency: usize,
    /// Requests of the trickle, in total (round robin over the sessions).
    pub trickle: u64,
    /// Trickle rate, requests per second.
    pub rate: f64,
    /// Tool called by the trickle.
    pub tool: String,
    /// Bytes of text per request.
    pub payload: usize,
    /// Processes whose memory is reported (the gateway).
    pub pids: Vec<u32>,
    /// Name of the run in the output.
    pub label: String,
    /// The whole run must finish within this.
    pub timeout: Duration,
}

/// A request for one session: answered with (latency, ok) or the reason it failed.
type Job = Sender<Result<(Duration, bool), String>>;

/// Runs the many-session benchmark; session tasks run on `ex`.
pub async fn run(ex: &LocalExecutor<'_>, opts: &Opts) -> Result<Value, String> {
    let work = async {
        let mut procs: Vec<Watched> = opts.pids.iter().copied().map(Watched::new).collect();
        procfs::sample_all(&mut procs, "before");
        let reqs = Rc::new(Requests::new(&opts.tool, "text", opts.payload));
        let gate = Rc::new(Semaphore::new(opts.connect_concurrency.max(1)));
        let (ready_tx, ready_rx) = channel::unbounded::<Result<usize, String>>();
        let mut jobs = Vec::with_capacity(opts.sessions);
        let mut tasks = Vec::with_capacity(opts.sessions);
        let mut opened = Vec::with_capacity(opts.sessions);
        let mut errors = 0usize;
        let mut first_error = None;
        let mut tally = |r: Result<usize, String>| match r {
            Ok(i) => opened.push(i),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        };
        let start = Instant::now();
        for i in 0..opts.sessions {
            let (job_tx, job_rx) = channel::bounded::<Job>(1);
            jobs.push(job_tx);
            let task = session(
                i,
                opts.url.clone(),
                gate.clone(),
                ready_tx.clone(),
                job_rx,
                reqs.clone(),
            );
            tasks.push(ex.spawn(task));
            if i == 0 {
                // The first session alone, so its one-time costs can be told apart.
                tally(ready_rx.recv().await.map_err(|e| e.to_string())?);
                procfs::sample_all(&mut procs, "one");
            }
        }
        drop(ready_tx);
        for _ in 1..opts.sessions {
            tally(ready_rx.recv().await.map_err(|e| e.to_string())?);
        }
        let open_secs = start.elapsed().as_secs_f64();
        procfs::sample_all(&mut procs, "open");

        let mut latencies = Vec::new();
        let mut trickle_errors = 0u64;
        if !opened.is_empty() {
            let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
            let t0 = Instant::now();
            for k in 0..opts.trickle {
                let i = opened[(k as usize * 7919) % opened.len()];
                let (tx, rx) = channel::bounded(1);
                let answer = match jobs[i].send(tx).await {
                    Ok(()) => rx.recv().await.unwrap_or_else(|e| Err(e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok((lat, ok)) => {
                        latencies.push(lat.as_nanos() as u64);
                        trickle_errors += u64::from(!ok);
                    }
                    Err(e) => {
                        trickle_errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                smol::Timer::at(t0 + interval * (k as u32 + 1)).await;
            }
        }
        procfs::sample_all(&mut procs, "after");

        let close_start = Instant::now();
        drop(jobs);
        for t in tasks {
            t.await;
        }
        let close_secs = close_start.elapsed().as_secs_f64();

        let per_session = procs.first().and_then(|p| {
            let v = p.to_json();
            let one = v["rss_kb"]["one"].as_f64()?;
            let all = v["rss_kb"]["open"].as_f64()?;
            (opened.len() > 1).then(|| ((all - one) * 1024.0 / (opened.len() - 1) as f64).round())
        });
        let mut out = json!({
            "label": opts.label,
            "mode": "sessions",
            "target": opts.url,
            "sessions": opts.sessions,
            "opened": opened.len(),
            "errors": errors,
            "first_error": first_error,
            "open_secs": (open_secs * 1e3).round() / 1e3,
            "close_secs": (close_secs * 1e3).round() / 1e3,
            "trickle": latencies.len(),
            "trickle_errors": trickle_errors,
            "per_session_bytes": per_session,
        });
        load::merge(&mut out, load::percentiles(&mut latencies));
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

/// One session: connect and initialize (holding a permit of `gate`), report to `ready`,
/// then serve jobs until the job channel closes, then close.
async fn session(
    index: usize,
    url: String,
    gate: Rc<Semaphore>,
    ready: Sender<Result<usize, String>>,
    jobs: Receiver<Job>,
    reqs: Rc<Requests>,
) {
    let permit = gate.acquire().await;
    let opened = async {
        let mut conn = Conn::connect(&url, Duration::ZERO).await?;
        mcp::initialize(&mut conn).await?;
        Ok::<_, String>(conn)
    }
    .await;
    drop(permit);
    let mut conn = match opened {
        Ok(c) => {
            let _ = ready.send(Ok(index)).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(format!("session {index}: {e}"))).await;
            return;
        }
    };
    drop(ready);
    let mut id = 1;
    while let Ok(reply) = jobs.recv().await {
        let t = Instant::now();
        let r = mcp::call(&mut conn, &reqs, id)
            .await
            .map(|ok| (t.elapsed(), ok));
        id += 1;
        let broken = r.is_err();
        let _ = reply.send(r).await;
        if broken {
            return;
        }
    }
    conn.close().await;
}
