//! The cost of one span on the request path: `Telemetry::start` + `Cx::end` from
//! `mcp-shared`, exactly what the router and the gateway call, timed over N spans for
//! tracing disabled, sampled (`always_on`) and unsampled (`traceidratio` 0.0); see
//! [`run`] for the modes.
//!
//! The sampled spans go through the bridge's own batch processor and OTLP/HTTP exporter
//! to an in-process sink (on its own thread). The queue is made large enough that no
//! span is dropped, and it is drained between rounds (untimed), so every round measures
//! the push path, never the drop path. The modes run in interleaved rounds; each figure
//! is the median over the rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mcp_shared::config::{
    Dur, ExporterType, OtlpProtocol, SamplerType, TracingConfig, DEFAULT_MAX_EXPORT_BATCH_SIZE,
};
use mcp_shared::telemetry::{Attrs, Cx, Target, Telemetry};
use opentelemetry::trace::SpanKind;
use serde_json::{json, Value};

use crate::{otlp, procfs};

/// How long a round may take to drain its spans to the sink before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The attributes of a typical span (those of a gateway `http.request` for a
/// `tools/call`); written only when the span is sampled, as in the bridge.
fn attrs(a: &mut Attrs, i: u64) {
    a.str("mcp.message.type", "request");
    a.str("mcp.method.name", "tools/call");
    a.str("gen_ai.operation.name", "execute_tool");
    a.str("gen_ai.tool.name", "fx.echo");
    a.int_text("jsonrpc.request.id", i);
    a.str("network.transport", "tcp");
}

/// Starts and ends `n` root spans; ns per span.
fn time_spans(tel: &Telemetry, n: u64, first_id: u64) -> f64 {
    let root = Cx::default();
    let t0 = Instant::now();
    for i in first_id..first_id + n {
        let cx = tel.start("bench.span", SpanKind::Internal, &root, |a| attrs(a, i));
        black_box(&cx).end();
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

/// Waits until `tel` has exported (or dropped) `want` spans.
fn drain(tel: &Telemetry, want: u64) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let (exported, dropped) = tel.stats();
        if exported + dropped >= want {
            return Ok(());
        }
        if t0.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "sampled spans not exported within {} s ({exported} of {want}, {dropped} dropped)",
                DRAIN_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// CPU time (ms) of this process's exporter threads (named `span-export`).
fn exporter_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "span-export")
        })
        .filter_map(|t| procfs::parse_stat(&std::fs::read_to_string(t.path().join("stat")).ok()?))
        .sum()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Largest `n`: a round of the `sampled` mode is exported as one request, which must
/// stay under the sink's body limit (a span is about 270 bytes).
pub const MAX_SPANS: u64 = 50_000;

/// The modes, in the order they run within a round.
const MODES: [&str; 4] = ["disabled", "sampled", "sampled_export", "unsampled"];

/// Runs the microbenchmark: `rounds` rounds of `n` spans per mode, after one round of
/// warm-up. Modes:
///
/// - `disabled`: tracing off (`enabled = false`);
/// - `sampled`: `always_on`, the span's own cost (start, attributes, end, queue push):
///   the batch size is one round, so the exporter thread sleeps during the timed loop
///   and exports the round afterwards;
/// - `sampled_export`: `always_on` with the default batch size (512), so the exporter
///   thread encodes and sends batches to the sink while spans are being made, as in
///   the bridge under load (on a 2-core machine it competes for the CPU);
/// - `unsampled`: `traceidratio` 0.0 (ids are made, nothing is recorded).
///
/// For the sampled modes it also reports the CPU the exporter thread spent per span
/// (`*_export_cpu_ns`): work off the request path, but on the same machine.
pub fn run(n: u64, rounds: usize, label: &str) -> Result<Value, String> {
    if n == 0 || n > MAX_SPANS {
        return Err(format!("span-cost: -n must be 1..={MAX_SPANS}"));
    }
    let rounds = rounds.max(1);
    let (url, sink) = otlp::start_thread()?;
    let queue = (n as usize).max(TracingConfig::default().max_queue_size);
    let base = TracingConfig {
        enabled: true,
        exporter_type: ExporterType::Otlp,
        otlp_protocol: OtlpProtocol::HttpProtobuf,
        otlp_endpoint: Some(url),
        // Room for one round: no span is ever dropped, so the push path is measured.
        max_queue_size: queue,
        // The partial batch at the end of a round goes out soon (the drain waits for it).
        scheduled_delay: Dur(Duration::from_millis(20)),
        ..TracingConfig::default()
    };
    let configs = [
        TracingConfig {
            enabled: false,
            ..base.clone()
        },
        TracingConfig {
            sampler_type: SamplerType::AlwaysOn,
            max_export_batch_size: Some(n as usize),
            scheduled_delay: Dur(Duration::from_secs(3600)),
            ..base.clone()
        },
        TracingConfig {
            sampler_type: SamplerType::AlwaysOn,
            ..base.clone()
        },
        TracingConfig {
            sampler_type: SamplerType::TraceIdRatio,
            sampler_param: 0.0,
            ..base
        },
    ];
    let tels = configs
        .iter()
        .map(|c| {
            Telemetry::init(
                c,
                "bench",
                "0",
                Target::Stderr,
                DEFAULT_MAX_EXPORT_BATCH_SIZE,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut runs: [Vec<f64>; 4] = Default::default();
    let mut made = [0u64; 4];
    // CPU of the exporter threads while a sampled mode ran and drained, measured rounds.
    let mut export_ms = [0.0f64; 4];
    let mut id = 0u64;
    // Round 0 is the warm-up (allocator, the SDK's lazy state, the first connection).
    for round in 0..=rounds {
        for (k, tel) in tels.iter().enumerate() {
            let cpu0 = exporter_cpu_ms();
            let ns = time_spans(tel, n, id);
            id += n;
            made[k] += n;
            if MODES[k].starts_with("sampled") {
                drain(tel, made[k])?;
            }
            if round > 0 {
                runs[k].push(ns);
                export_ms[k] += exporter_cpu_ms() - cpu0;
            }
        }
    }
    for tel in &tels {
        tel.shutdown();
    }
    let s = sink.to_json();
    let body = s["body_bytes"].as_f64().unwrap_or(0.0);
    let spans = s["spans"].as_f64().unwrap_or(0.0);
    let med: Vec<f64> = runs.iter().map(|r| median(r)).collect();
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let mut out = json!({
        "label": label,
        "mode": "span-cost",
        "spans_per_round": n,
        "rounds": rounds,
        "attributes": Attrs::collect(|a| attrs(a, 0)).len(),
        "sink_spans": spans,
        "sink_requests": s["requests"],
        "otlp_bytes_per_span": if spans > 0.0 { Some((body / spans).round()) } else { None },
        "libc": if cfg!(target_env = "musl") { "musl" } else { "glibc" },
    });
    for (k, name) in MODES.iter().enumerate() {
        let (exported, dropped) = tels[k].stats();
        out[format!("{name}_ns")] = round1(med[k]).into();
        out[format!("{name}_ratio")] = ((med[k] / med[0] * 10.0).round() / 10.0).into();
        out[format!("{name}_ns_runs")] = runs[k].iter().map(|&x| round1(x)).collect();
        out[format!("{name}_exported")] = exported.into();
        out[format!("{name}_dropped")] = dropped.into();
        if name.starts_with("sampled") {
            // Exporter thread CPU (batching, OTLP encoding, HTTP) per span: 10 ms
            // resolution over all measured rounds.
            let per = export_ms[k] * 1e6 / (n as f64 * rounds as f64);
            out[format!("{name}_export_cpu_ns")] = per.round().into();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_all_three_modes_and_exports_the_sampled_spans() {
        let v = run(200, 1, "t").unwrap();
        for m in MODES {
            assert!(v[format!("{m}_ns")].as_f64().unwrap() > 0.0, "{m}: {v}");
            assert_eq!(v[format!("{m}_dropped")], 0, "{m}");
        }
        // Warm-up round plus one measured round, all sampled spans delivered.
        assert_eq!(v["sampled_exported"], 400);
        assert_eq!(v["sampled_export_exported"], 400);
        assert_eq!(
            (&v["disabled_exported"], &v["unsampled_exported"]),
            (&0.into(), &0.into())
        );
        assert_eq!(v["sink_spans"], 800.0);
        assert!(run(MAX_SPANS + 1, 1, "t").is_err());
    }
}
