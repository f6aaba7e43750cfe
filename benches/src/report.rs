//! The markdown table: reads the JSON results of one `run.sh` run (one object per line,
//! found by `label`), computes the floors and ratios, and checks each budget of the
//! benchmark issue.
//!
//! Labels read: `direct-c{1,32}`, `ws-floor-c{1,32}`, `gateway-c{1,32}`,
//! `router-gateway-c{1,32}`, `peer-supergateway-c{1,32}`, `sessions-S` (any S), `startup`,
//! and the musl builds' `musl-startup`, `musl-router-gateway-c1`, `musl-sessions-S`;
//! for tracing `trace-{off,on,basic,ratio}-c{1,32}` (load), `otlp-{on,basic,ratio}-c{1,32}`
//! (`otlp-stats`), `span-cost`, and `musl-trace-on-c1`, `musl-span-cost`; with
//! server-everything as the backend `ev-trace-{off,on,ratio}-c{1,32}` and
//! `ev-otlp-{on,ratio}-c{1,32}`.
//! Missing results show as `n/a`. A label may carry a run number (`direct-c1#3`):
//! repeated runs of one scenario are combined by their median (see [`combine`]).
//!
//! Floors: the direct stdio round trip (client ↔ fixture, which includes the fixture's
//! own work) and the raw WebSocket echo round trip (one hop). The two-hop floor is
//! `2 × WS + stdio`, per percentile. Memory is in decimal units (1 MB = 10⁶ bytes,
//! 1 KB = 10³ bytes), the stricter reading of the budgets.

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

use crate::num;

/// Budget: router + gateway p50 at C = 1, at most this many times the two-hop floor.
pub const P50_FLOOR_RATIO: f64 = 1.5;
/// Budget: router + gateway p99 at C = 1, at most this many times the two-hop floor.
pub const P99_FLOOR_RATIO: f64 = 2.0;
/// Budget: gateway throughput at C = 32, at least this share of direct stdio.
pub const THROUGHPUT_SHARE: f64 = 0.5;
/// Budget: router steady RSS, bytes.
pub const ROUTER_RSS: f64 = 2e6;
/// Budget: gateway idle RSS, bytes.
pub const GATEWAY_IDLE_RSS: f64 = 3e6;
/// Budget: memory per additional idle session, bytes.
pub const PER_SESSION: f64 = 8e3;
/// Budget: gateway RSS with 10,000 idle sessions, bytes.
pub const GATEWAY_10K_RSS: f64 = 100e6;
/// Budget: gateway startup to ready, ms.
pub const STARTUP_MS: f64 = 20.0;
/// Budget: throughput lost with tracing `always_on`, share of tracing off.
pub const TRACE_ON_LOSS: f64 = 0.05;
/// Budget: throughput lost with tracing `traceidratio` 0.01, share of tracing off.
pub const TRACE_RATIO_LOSS: f64 = 0.01;
/// Budget: OTLP payload bytes per typical span.
pub const BYTES_PER_SPAN: f64 = 300.0;

const HEADER: [&str; 12] = [
    "Scenario", "C", "Req/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "Errors", "RSS", "Result",
    "Budget", "Status",
];

type Row = [String; 12];

/// Reads `path` and renders the table.
pub fn run(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", i + 1))?;
        let label = v["label"].as_str().unwrap_or_default();
        let base = label.split_once('#').map_or(label, |(b, _)| b).to_string();
        match groups.iter_mut().find(|(b, _)| *b == base) {
            Some((_, runs)) => runs.push(v),
            None => groups.push((base, vec![v])),
        }
    }
    let results = groups
        .into_iter()
        .map(|(b, runs)| (b, combine(runs)))
        .collect();
    Ok(render(&build(&results)))
}

/// Fields of a load result that are combined as the median over repeated runs.
const MEDIAN_FIELDS: [&str; 14] = [
    "rps",
    "p50_us",
    "p90_us",
    "p99_us",
    "max_us",
    "mean_us",
    "bytes_per_span",
    "router_bytes_per_span",
    "gateway_bytes_per_span",
    "router_spans_per_request",
    "gateway_spans_per_request",
    "router_spans",
    "gateway_spans",
    "sinks_cpu_ms",
];

/// Fields of a result that are summed over repeated runs.
const SUM_FIELDS: [&str; 2] = ["errors", "gateway_spans_dropped"];

/// One result from repeated runs of a scenario (labels `NAME#1`, `NAME#2`, …): the
/// median of each of [`MEDIAN_FIELDS`] and `cpu_us_per_request_*`, the sum of each of [`SUM_FIELDS`], the median of
/// each process's memory readings, and `runs` plus `p50_range_us` (lowest and highest p50) to show the
/// spread, and the per-run `p50_runs_us`, `p99_runs_us` and `rps_runs` (in run order,
/// for ratios between scenarios measured in the same rounds).
fn combine(mut runs: Vec<Value>) -> Value {
    if runs.len() == 1 {
        return runs.pop().expect("one run");
    }
    let mut out = runs.last().cloned().expect("runs are not empty");
    let cpu_keys: Vec<String> = out
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| k.starts_with("cpu_us_per_request_"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for key in MEDIAN_FIELDS
        .iter()
        .copied()
        .chain(cpu_keys.iter().map(String::as_str))
    {
        let mut xs: Vec<f64> = runs.iter().filter_map(|v| num(v, key)).collect();
        xs.sort_by(f64::total_cmp);
        if !xs.is_empty() {
            out[key] = xs[xs.len() / 2].into();
        }
    }
    for key in SUM_FIELDS {
        if runs.iter().any(|v| num(v, key).is_some()) {
            out[key] = runs.iter().filter_map(|v| num(v, key)).sum::<f64>().into();
        }
    }
    // Memory: each process's readings (`procs[].rss_kb.WHEN`), median over the runs,
    // the spread kept beside (`rss_kb_runs`): a reading moves by 100–200 KiB between
    // runs with the binary's resident code.
    if let Some(procs) = out["procs"].as_array_mut() {
        for p in procs.iter_mut() {
            let Some(name) = p["name"].as_str().map(str::to_string) else {
                continue;
            };
            let whens: Vec<String> = p["rss_kb"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            for when in whens {
                let mut xs: Vec<f64> = runs
                    .iter()
                    .filter_map(|v| rss_kb(v, &name, &when))
                    .collect();
                xs.sort_by(f64::total_cmp);
                if !xs.is_empty() {
                    p["rss_kb"][&when] = xs[xs.len() / 2].into();
                    p["rss_kb_runs"][&when] = xs.into();
                }
            }
        }
    }
    out["runs"] = runs.len().into();
    let p50s: Vec<f64> = runs.iter().filter_map(|v| num(v, "p50_us")).collect();
    if !p50s.is_empty() {
        let lo = p50s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p50s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out["p50_range_us"] = serde_json::json!([lo, hi]);
    }
    out["p50_runs_us"] = p50s.into();
    let per_run = |key: &str| -> Vec<f64> { runs.iter().filter_map(|v| num(v, key)).collect() };
    out["p99_runs_us"] = per_run("p99_us").into();
    out["rps_runs"] = per_run("rps").into();
    out
}

fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let align: Vec<&str> = HEADER
        .iter()
        .enumerate()
        .map(|(i, _)| if (1..=7).contains(&i) { "---:" } else { "---" })
        .collect();
    let _ = writeln!(s, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

fn status(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "**not met**".into(),
        None => "n/a".into(),
    }
}

fn us(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1}"))
}

fn mb(kb: f64) -> String {
    format!("{:.2} MB", kb * 1024.0 / 1e6)
}

/// The short name of a process: `mcp-gateway` → `gateway`.
fn short(name: &str) -> &str {
    name.strip_prefix("mcp-").unwrap_or(name)
}

/// RSS (KiB) of the first process of `v` whose name starts with `name`, at `when`.
fn rss_kb(v: &Value, name: &str, when: &str) -> Option<f64> {
    proc_of(v, name)?["rss_kb"][when].as_f64()
}

fn proc_of<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["procs"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(name)))
}

struct Builder<'a> {
    r: &'a HashMap<String, Value>,
    rows: Vec<Row>,
}

impl Builder<'_> {
    fn get(&self, label: &str) -> Option<&Value> {
        self.r.get(label)
    }

    fn push(&mut self, cells: [&str; 12]) {
        self.rows.push(cells.map(str::to_string));
    }

    /// A row without load figures: scenario, concurrency, RSS, result, budget, status.
    fn push_summary(
        &mut self,
        scenario: &str,
        c: &str,
        rss: &str,
        result: &str,
        budget: &str,
        status: &str,
    ) {
        self.push([
            scenario, c, "", "", "", "", "", "", rss, result, budget, status,
        ]);
    }

    /// A row for a load result (`n/a` everywhere when it is missing).
    fn load_row(&mut self, label: &str, scenario: &str, result: &str, budget: &str, status: &str) {
        let v = self.get(label);
        let f = |k: &str| v.and_then(|v| num(v, k));
        let rss = v
            .and_then(|v| v["procs"].as_array())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some(format!(
                            "{} {}",
                            short(p["name"].as_str()?),
                            mb(p["rss_kb"]["end"].as_f64()?)
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let scenario = match v.and_then(|v| v["runs"].as_u64()) {
            Some(n) => format!("{scenario} (median of {n} runs)"),
            None => scenario.to_string(),
        };
        let result = match v.and_then(|v| v["p50_range_us"].as_array()) {
            Some(r) if r.len() == 2 => {
                let spread = format!(
                    "p50 {}–{} µs over the runs",
                    us(r[0].as_f64()),
                    us(r[1].as_f64())
                );
                if result.is_empty() {
                    spread
                } else {
                    format!("{result}; {spread}")
                }
            }
            _ => result.to_string(),
        };
        let row = [
            scenario,
            v.map_or("n/a".into(), |v| v["concurrency"].to_string()),
            f("rps").map_or("n/a".into(), |x| format!("{x:.0}")),
            us(f("p50_us")),
            us(f("p90_us")),
            us(f("p99_us")),
            us(f("max_us")),
            f("errors").map_or("n/a".into(), |x| format!("{x:.0}")),
            rss,
            result,
            budget.to_string(),
            status.to_string(),
        ];
        self.rows.push(row);
    }

    fn p(&self, label: &str, key: &str) -> Option<f64> {
        self.get(label).and_then(|v| num(v, key))
    }

    /// `2 × WS + stdio` at percentile `key`, C = 1.
    fn two_hop(&self, key: &str) -> Option<f64> {
        Some(2.0 * self.p("ws-floor-c1", key)? + self.p("direct-c1", key)?)
    }

    /// The lowest and highest two-hop p50 floor computed within one round (run k of the
    /// WS echo and run k of direct stdio), when there were several rounds.
    fn two_hop_rounds(&self) -> Option<(f64, f64)> {
        let runs = |label: &str| -> Option<Vec<f64>> {
            let xs = self.get(label)?["p50_runs_us"].as_array()?;
            Some(xs.iter().filter_map(Value::as_f64).collect())
        };
        let (ws, direct) = (runs("ws-floor-c1")?, runs("direct-c1")?);
        let floors: Vec<f64> = ws.iter().zip(&direct).map(|(w, d)| 2.0 * w + d).collect();
        let lo = floors.iter().copied().reduce(f64::min)?;
        let hi = floors.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }

    /// `WS + stdio` at percentile `key`, C = 1 (the gateway-only floor).
    fn one_hop(&self, key: &str) -> Option<f64> {
        Some(self.p("ws-floor-c1", key)? + self.p("direct-c1", key)?)
    }

    /// The musl result for `label` if there is one, else the default build's, with a
    /// note for the scenario name.
    fn prefer_musl(&self, label: &str) -> (String, &'static str) {
        let musl = format!("musl-{label}");
        if self.r.contains_key(&musl) {
            (musl, "musl")
        } else {
            (label.to_string(), "glibc; musl not measured")
        }
    }

    fn latency_rows(&mut self) {
        let direct_c32 = self.p("direct-c32", "rps");
        self.load_row("direct-c1", "Floor: direct stdio → fixture", "", "", "");
        self.load_row("direct-c32", "Floor: direct stdio → fixture", "", "", "");
        self.load_row(
            "ws-floor-c1",
            "Floor: raw WebSocket echo, one hop",
            "",
            "",
            "",
        );
        self.load_row(
            "ws-floor-c32",
            "Floor: raw WebSocket echo, one hop",
            "",
            "",
            "",
        );
        let (f50, f90, f99) = (
            self.two_hop("p50_us"),
            self.two_hop("p90_us"),
            self.two_hop("p99_us"),
        );
        let spread = self.two_hop_rounds().map_or(String::new(), |(lo, hi)| {
            format!(
                "p50 {}–{} µs within single rounds",
                us(Some(lo)),
                us(Some(hi))
            )
        });
        self.push([
            "Floor: two hops = 2 × WS echo + direct stdio (per percentile)",
            "1",
            "",
            &us(f50),
            &us(f90),
            &us(f99),
            "",
            "",
            "",
            &spread,
            "",
            "",
        ]);

        let ratio = |x: Option<f64>, floor: Option<f64>| Some(x? / floor?);
        let gw50 = ratio(self.p("gateway-c1", "p50_us"), self.one_hop("p50_us"));
        let gw99 = ratio(self.p("gateway-c1", "p99_us"), self.one_hop("p99_us"));
        let result = match (gw50, gw99) {
            (Some(a), Some(b)) => format!("p50 {a:.2}×, p99 {b:.2}× the WS + stdio floor"),
            _ => "n/a".into(),
        };
        self.load_row(
            "gateway-c1",
            "Gateway only: WS client → gateway → fixture",
            &result,
            "",
            "",
        );

        let rg50 = ratio(self.p("router-gateway-c1", "p50_us"), f50);
        let rg99 = ratio(self.p("router-gateway-c1", "p99_us"), f99);
        let (result, ok) = match (rg50, rg99) {
            (Some(a), Some(b)) => (
                format!("p50 {a:.2}×, p99 {b:.2}× the two-hop floor"),
                Some(a <= P50_FLOOR_RATIO && b <= P99_FLOOR_RATIO),
            ),
            _ => ("n/a".into(), None),
        };
        self.load_row(
            "router-gateway-c1",
            "Router + gateway: stdio client → router → gateway → fixture",
            &result,
            &format!("p50 ≤ {P50_FLOOR_RATIO}×, p99 ≤ {P99_FLOOR_RATIO}× two-hop floor"),
            &status(ok),
        );

        let share = |label: &str| Some(self.p(label, "rps")? / direct_c32?);
        let (gw, rg) = (share("gateway-c32"), share("router-gateway-c32"));
        let result = gw.map_or("n/a".into(), |s| {
            format!("{:.0} % of direct stdio throughput", s * 100.0)
        });
        self.load_row(
            "gateway-c32",
            "Gateway only: WS client → gateway → fixture",
            &result,
            &format!("≥ {:.0} % of direct", THROUGHPUT_SHARE * 100.0),
            &status(gw.map(|s| s >= THROUGHPUT_SHARE)),
        );
        let result = rg.map_or("n/a".into(), |s| {
            format!("{:.0} % of direct stdio throughput", s * 100.0)
        });
        self.load_row(
            "router-gateway-c32",
            "Router + gateway: stdio client → router → gateway → fixture",
            &result,
            "",
            "",
        );
        self.tracing_rows();
        self.span_cost_rows();
        self.instruction_rows();

        for c in [1, 32] {
            let label = format!("peer-supergateway-c{c}");
            if self.r.contains_key(&label) {
                let result = match c {
                    1 => ratio(self.p(&label, "p50_us"), self.p("gateway-c1", "p50_us"))
                        .map_or("n/a".into(), |r| format!("p50 {r:.2}× the gateway's")),
                    _ => ratio(self.p(&label, "rps"), self.p("gateway-c32", "rps"))
                        .map_or("n/a".into(), |r| {
                            format!("{:.0} % of the gateway's throughput", r * 100.0)
                        }),
                };
                self.load_row(
                    &label,
                    "Peer: WS client → supergateway (Node) → fixture",
                    &result,
                    "",
                    "",
                );
            }
        }
    }

    /// Router + gateway with tracing off, `always_on` and `traceidratio` 0.01
    /// (`trace-{off,on,ratio}-cC`, measured in the same rounds), with the OTLP figures of
    /// the traced runs (`otlp-{on,ratio}-cC`) and the payload bytes per span; then the
    /// same with server-everything as the backend (`ev-` labels), when it ran.
    fn tracing_rows(&mut self) {
        self.tracing_rows_with("", "");
        self.payload_row();
        self.tracing_rows_with("ev-", " with server-everything (Node) as the backend");
    }

    /// The tracing rows of one backend: labels `{prefix}trace-…`, `{prefix}otlp-…`;
    /// `backend` completes the scenario's name. Nothing for a C that did not run.
    fn tracing_rows_with(&mut self, prefix: &str, backend: &str) {
        for c in [1, 32] {
            let off = format!("{prefix}trace-off-c{c}");
            if !prefix.is_empty() && self.get(&off).is_none() {
                continue;
            }
            self.load_row(
                &off,
                &format!("Router + gateway{backend}, tracing off (baseline of the tracing rounds)"),
                "",
                "",
                "",
            );
            for (mode, what, loss_budget) in [
                ("on", "tracing always_on", TRACE_ON_LOSS),
                (
                    "basic",
                    "tracing always_on with span_detail basic",
                    TRACE_ON_LOSS,
                ),
                ("ratio", "tracing traceidratio 0.01", TRACE_RATIO_LOSS),
            ] {
                let label = format!("{prefix}trace-{mode}-c{c}");
                if mode == "basic" && self.get(&label).is_none() {
                    continue;
                }
                let otlp = self.get(&format!("{prefix}otlp-{mode}-c{c}"));
                let loss = self.ratio_to(&label, &off, "rps").map(|r| 1.0 - r);
                let mut result = match (
                    self.ratio_to(&label, &off, "rps"),
                    self.ratio_to(&label, &off, "p50_us"),
                    self.ratio_to(&label, &off, "p99_us"),
                ) {
                    (Some(t), Some(p50), Some(p99)) => format!(
                        "throughput {t:.3}× off ({:+.1} %), p50 {p50:.2}×, p99 {p99:.2}× off",
                        (t - 1.0) * 100.0
                    ),
                    _ => "n/a".into(),
                };
                if let Some((mid, lo, hi)) = self.paired_range(&label, &off, "rps_runs") {
                    let _ = write!(
                        result,
                        "; throughput per round {lo:.3}–{hi:.3}× off, median {mid:.3}×"
                    );
                }
                let cpu = |l: &str, p: &str| self.p(l, &format!("cpu_us_per_request_{p}"));
                if let (Some(r), Some(g)) = (cpu(&label, "mcp-router"), cpu(&label, "mcp-gateway"))
                {
                    let _ = write!(
                        result,
                        "; CPU per request: router {r:.1} µs, gateway {g:.1} µs"
                    );
                    if let (Some(r0), Some(g0)) =
                        (cpu(&off, "mcp-router"), cpu(&off, "mcp-gateway"))
                    {
                        let _ = write!(result, " (off: {r0:.1}, {g0:.1})");
                    }
                }
                if let Some(o) = otlp {
                    if let Some(ms) = num(o, "sinks_cpu_ms") {
                        let per = ms * 1e3 / num(o, "requests").unwrap_or(1.0).max(1.0);
                        let _ = write!(result, ", the two sinks {per:.1} µs");
                    }
                    let router = num(o, "router_spans_per_request");
                    let gateway = num(o, "gateway_spans_per_request");
                    if let (Some(r), Some(g)) = (router, gateway) {
                        let _ =
                            write!(result, "; spans per request: router {r:.3}, gateway {g:.3}");
                    }
                    let dropped = num(o, "gateway_spans_dropped").unwrap_or(0.0);
                    if dropped > 0.0 {
                        let _ = write!(result, "; gateway dropped {dropped:.0} spans");
                    }
                    if o["settled"] == false {
                        result.push_str("; exporters had not settled when counted");
                    }
                }
                self.load_row(
                    &label,
                    &format!(
                        "Router + gateway{backend}, {what} (both binaries, OTLP/HTTP to a \
                         loopback sink)"
                    ),
                    &result,
                    &format!("≤ {:.0} % throughput loss", loss_budget * 100.0),
                    &status(loss.map(|l| l <= loss_budget)),
                );
            }
        }
    }

    /// `label`'s `key` over `base`'s (medians).
    fn ratio_to(&self, label: &str, base: &str, key: &str) -> Option<f64> {
        Some(self.p(label, key)? / self.p(base, key)?)
    }

    /// The median, lowest and highest ratio of run k of `label` to run k of `base`
    /// (`key` is a per-run array such as `rps_runs`). Run k of both comes from the same
    /// round, so these ratios are not moved by a drift of the machine between rounds.
    fn paired_range(&self, label: &str, base: &str, key: &str) -> Option<(f64, f64, f64)> {
        let runs = |l: &str| -> Option<Vec<f64>> {
            Some(
                self.get(l)?[key]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect(),
            )
        };
        let (a, b) = (runs(label)?, runs(base)?);
        let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        if ratios.len() < 2 {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let mid = if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        };
        Some((mid, ratios[0], ratios[n - 1]))
    }

    /// OTLP payload bytes per span at `always_on`: body bytes the sinks received over
    /// the spans exported (the gateway's own count, `mcp_gateway_spans_exported_total`).
    fn payload_row(&mut self) {
        let mut parts = Vec::new();
        let mut worst: Option<f64> = None;
        for c in [1, 32] {
            let Some(o) = self.get(&format!("otlp-on-c{c}")) else {
                continue;
            };
            let f = |k: &str| num(o, k).map_or("n/a".into(), |x| format!("{x:.0}"));
            let all = num(o, "bytes_per_span");
            worst = match (worst, all) {
                (Some(w), Some(a)) => Some(w.max(a)),
                (w, a) => w.or(a),
            };
            parts.push(format!(
                "C = {c}: {} B per span over both services (router {} B, gateway {} B; \
                 {} and {} spans per run)",
                f("bytes_per_span"),
                f("router_bytes_per_span"),
                f("gateway_bytes_per_span"),
                f("router_spans"),
                f("gateway_spans"),
            ));
        }
        let result = if parts.is_empty() {
            "n/a".to_string()
        } else {
            parts.join("; ")
        };
        self.push_summary(
            "OTLP/HTTP payload per span, tracing always_on (body bytes / spans exported)",
            "1, 32",
            "",
            &result,
            &format!("≤ {BYTES_PER_SPAN:.0} B per span"),
            &status(worst.map(|b| b <= BYTES_PER_SPAN)),
        );
    }

    /// Instructions per request under callgrind (`instr-{off,on,basic,ratio}-{router,
    /// gateway}`, from `run.sh --instructions`): each traced mode against off.
    fn instruction_rows(&mut self) {
        let per = |b: &Self, l: &str, key: &str| -> Option<f64> {
            let v = b.get(l)?;
            Some(num(v, key)? / num(v, "requests")?.max(1.0))
        };
        // Clock readings apart: callgrind counts few instructions for one, but each
        // costs tens of ns on a VM (docs/tracing.md, "Clock readings").
        let reads = |b: &Self, l: &str| {
            per(b, l, "clock_reads").map_or(String::new(), |r| format!(", {r:.1} clock reads"))
        };
        for target in ["router", "gateway"] {
            let off_label = format!("instr-off-{target}");
            let Some(off) = per(self, &off_label, "instructions") else {
                continue;
            };
            let mut parts = vec![format!("off {:.1}k{}", off / 1e3, reads(self, &off_label))];
            for (mode, what) in [
                ("on", "always_on"),
                ("basic", "always_on basic"),
                ("ratio", "traceidratio 0.01"),
            ] {
                let label = format!("instr-{mode}-{target}");
                if let Some(x) = per(self, &label, "instructions") {
                    parts.push(format!(
                        "{what} {:.1}k ({:+.1} %{})",
                        x / 1e3,
                        (x / off - 1.0) * 100.0,
                        reads(self, &label)
                    ));
                }
            }
            self.push_summary(
                &format!(
                    "Instructions per request, {target} (callgrind, C = 32, fixture backend; \
                     the whole process, exporter thread included)"
                ),
                "32",
                "",
                &parts.join("; "),
                "",
                "",
            );
        }
    }

    /// The span-cost microbenchmark (`span-cost`, `musl-span-cost`): ns per span started
    /// and ended, per mode, and its ratio to tracing disabled.
    fn span_cost_rows(&mut self) {
        let builds: Vec<(&str, Value)> = [("glibc", "span-cost"), ("musl", "musl-span-cost")]
            .into_iter()
            .filter_map(|(b, l)| Some((b, self.get(l)?.clone())))
            .collect();
        for (mode, scenario) in [
            ("disabled", "Span start + end, tracing disabled"),
            (
                "sampled",
                "Span start + end, sampled (always_on; the exporter sends after the timed loop)",
            ),
            (
                "sampled_export",
                "Span start + end, sampled, exporter running (always_on, OTLP/HTTP to an in-process sink)",
            ),
            ("unsampled", "Span start + end, unsampled (traceidratio 0.0)"),
        ] {
            let parts: Vec<String> = builds
                .iter()
                .filter_map(|(build, v)| {
                    let ns = num(v, &format!("{mode}_ns"))?;
                    let runs: Vec<f64> = v[format!("{mode}_ns_runs")]
                        .as_array()?
                        .iter()
                        .filter_map(Value::as_f64)
                        .collect();
                    let lo = runs.iter().copied().reduce(f64::min)?;
                    let hi = runs.iter().copied().reduce(f64::max)?;
                    let ratio = if mode == "disabled" {
                        String::new()
                    } else {
                        format!(", {:.1}× disabled", num(v, &format!("{mode}_ratio"))?)
                    };
                    let mut bytes = match num(v, &format!("{mode}_export_cpu_ns")) {
                        Some(e) => format!("; exporter thread {:.2} µs CPU per span", e / 1e3),
                        None => String::new(),
                    };
                    if let ("sampled_export", Some(b)) = (mode, num(v, "otlp_bytes_per_span")) {
                        let _ = write!(bytes, "; {b:.0} B per span over OTLP");
                    }
                    Some(format!(
                        "{build}: {ns:.1} ns per span{ratio} ({lo:.1}–{hi:.1} ns over {} round{} of {}){bytes}",
                        runs.len(),
                        if runs.len() == 1 { "" } else { "s" },
                        v["spans_per_round"]
                    ))
                })
                .collect();
            let result = if parts.is_empty() {
                "n/a".to_string()
            } else {
                parts.join("; ")
            };
            self.push_summary(scenario, "", "", &result, "", "");
        }
    }

    fn memory_rows(&mut self) {
        // Router steady RSS, after the measured C = 1 load.
        let (label, build) = self.prefer_musl("router-gateway-c1");
        let end = self
            .get(&label)
            .and_then(|v| rss_kb(v, "mcp-router", "end"));
        let init = self
            .get(&label)
            .and_then(|v| rss_kb(v, "mcp-router", "init"));
        let result = match (init, end) {
            (Some(i), Some(e)) => format!("{} after initialize, {} after the load", mb(i), mb(e)),
            _ => "n/a".into(),
        };
        self.push_summary(
            &format!("Router RSS, steady ({build})"),
            "",
            &end.map_or("n/a".into(), mb),
            &result,
            "≤ 2 MB",
            &status(end.map(|kb| kb * 1024.0 <= ROUTER_RSS)),
        );

        self.tracing_memory_rows();

        // Gateway idle RSS: at the readiness line, and before the first session.
        let sizes = self.session_sizes();
        let (startup, build) = self.prefer_musl("startup");
        let ready = self.get(&startup).and_then(|v| num(v, "rss_ready_kb"));
        let smallest = sizes
            .first()
            .map_or("sessions-1000".into(), |s| format!("sessions-{s}"));
        let (sess, _) = self.prefer_musl(&smallest);
        let before = self
            .get(&sess)
            .and_then(|v| rss_kb(v, "mcp-gateway", "before"));
        let worst = ready.into_iter().chain(before).reduce(f64::max);
        let result = format!(
            "{} at the readiness line, {} before the first session",
            ready.map_or("n/a".into(), mb),
            before.map_or("n/a".into(), mb)
        );
        self.push_summary(
            &format!("Gateway RSS, idle ({build})"),
            "",
            &worst.map_or("n/a".into(), mb),
            &result,
            "≤ 3 MB",
            &status(worst.map(|kb| kb * 1024.0 <= GATEWAY_IDLE_RSS)),
        );

        for s in sizes {
            for musl in [false, true] {
                let label = format!("{}sessions-{s}", if musl { "musl-" } else { "" });
                let measured_budget = musl || !self.r.contains_key(&format!("musl-sessions-{s}"));
                if musl && !self.r.contains_key(&label) {
                    continue;
                }
                self.session_row(&label, s, musl, measured_budget);
            }
        }

        let (label, build) = self.prefer_musl("startup");
        let v = self.get(&label);
        let median = v.and_then(|v| num(v, "median_ms"));
        let result = v.map_or("n/a".into(), |v| {
            format!(
                "median {:.2} ms (min {:.2}, max {:.2}; {} runs)",
                num(v, "median_ms").unwrap_or(f64::NAN),
                num(v, "min_ms").unwrap_or(f64::NAN),
                num(v, "max_ms").unwrap_or(f64::NAN),
                v["runs"]
            )
        });
        self.push_summary(
            &format!("Gateway startup: spawn → listening line ({build})"),
            "",
            "",
            &result,
            "≤ 20 ms",
            &status(median.map(|ms| ms <= STARTUP_MS)),
        );
    }

    /// RSS of both binaries with tracing `always_on`, after the C = 1 load
    /// (`musl-trace-on-c1`, else the glibc rounds), next to the same without tracing.
    fn tracing_memory_rows(&mut self) {
        let (label, build) = self.prefer_musl("trace-on-c1");
        let off_label = if build == "musl" {
            "musl-router-gateway-c1"
        } else {
            "trace-off-c1"
        };
        for (name, short_name, budget) in [
            ("mcp-router", "Router", Some(ROUTER_RSS)),
            ("mcp-gateway", "Gateway", None),
        ] {
            let v = self.get(&label);
            let end = v.and_then(|v| rss_kb(v, name, "end"));
            let init = v.and_then(|v| rss_kb(v, name, "init"));
            let off = self.get(off_label).and_then(|v| rss_kb(v, name, "end"));
            let spread = v
                .and_then(|v| proc_of(v, name))
                .and_then(|p| p["rss_kb_runs"]["end"].as_array())
                .filter(|xs| xs.len() > 1)
                .map(|xs| {
                    let xs: Vec<f64> = xs.iter().filter_map(Value::as_f64).collect();
                    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!(
                        " (medians of {} runs; after the load {}–{})",
                        xs.len(),
                        mb(lo),
                        mb(hi)
                    )
                })
                .unwrap_or_default();
            let result = match (init, end) {
                (Some(i), Some(e)) => format!(
                    "{} after initialize, {} after the load; tracing off: {}{spread}",
                    mb(i),
                    mb(e),
                    off.map_or("n/a".into(), mb)
                ),
                _ => "n/a".into(),
            };
            let (budget_text, ok) = match budget {
                Some(b) => (
                    format!("≤ {:.0} MB", b / 1e6),
                    status(end.map(|kb| kb * 1024.0 <= b)),
                ),
                None => ("(reference)".to_string(), String::new()),
            };
            self.push_summary(
                &format!("{short_name} RSS with tracing always_on, after the C = 1 load ({build})"),
                "",
                &end.map_or("n/a".into(), mb),
                &result,
                &budget_text,
                &ok,
            );
        }
    }

    /// The session counts measured (`sessions-S`, `musl-sessions-S`), ascending.
    fn session_sizes(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .r
            .keys()
            .filter_map(|l| {
                l.trim_start_matches("musl-")
                    .strip_prefix("sessions-")?
                    .parse()
                    .ok()
            })
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    fn session_row(&mut self, label: &str, s: u64, musl: bool, budgeted: bool) {
        let v = self.get(label).cloned();
        let build = if musl { "musl" } else { "glibc" };
        let scenario = format!("{s} idle sessions + trickle ({build})");
        let Some(v) = v else {
            self.push([
                &scenario, "", "", "", "", "", "", "n/a", "", "n/a", "", "n/a",
            ]);
            return;
        };
        let per = num(&v, "per_session_bytes");
        let opened = num(&v, "opened").unwrap_or(0.0);
        let before = rss_kb(&v, "mcp-gateway", "before");
        let open = rss_kb(&v, "mcp-gateway", "open");
        let hwm = proc_of(&v, "mcp-gateway").and_then(|p| p["hwm_kb"].as_f64());
        let result = format!(
            "{opened:.0}/{s} held (opened in {:.2} s); gateway {} → {}; {} per extra session",
            num(&v, "open_secs").unwrap_or(f64::NAN),
            before.map_or("n/a".into(), mb),
            open.map_or("n/a".into(), mb),
            per.map_or("n/a".into(), |b| format!("{:.2} KB", b / 1e3)),
        );
        let errors = num(&v, "errors").unwrap_or(0.0) + num(&v, "trickle_errors").unwrap_or(0.0);
        let (budget, ok) = if !budgeted {
            ("(reference)".to_string(), None)
        } else if s >= 10_000 {
            (
                "all held, gateway < 100 MB; ≤ 8 KB/session".to_string(),
                Some(
                    opened >= s as f64
                        && hwm.is_some_and(|kb| kb * 1024.0 < GATEWAY_10K_RSS)
                        && per.is_some_and(|b| b <= PER_SESSION),
                ),
            )
        } else {
            ("≤ 8 KB/session".to_string(), per.map(|b| b <= PER_SESSION))
        };
        let row = [
            scenario,
            String::new(),
            String::new(),
            us(num(&v, "p50_us")),
            us(num(&v, "p90_us")),
            us(num(&v, "p99_us")),
            us(num(&v, "max_us")),
            format!("{errors:.0}"),
            hwm.map_or("n/a".into(), |kb| format!("gateway peak {}", mb(kb))),
            result,
            budget,
            if budgeted { status(ok) } else { String::new() },
        ];
        self.rows.push(row);
    }
}

fn build(r: &HashMap<String, Value>) -> Vec<Row> {
    let mut b = Builder {
        r,
        rows: Vec::new(),
    };
    b.latency_rows();
    b.memory_rows();
    b.rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(label: &str, c: u64, rps: f64, p50: f64, p99: f64) -> (String, Value) {
        (
            label.to_string(),
            json!({ "label": label, "concurrency": c, "rps": rps, "p50_us": p50, "p90_us": p50,
                    "p99_us": p99, "max_us": p99, "errors": 0, "procs": [] }),
        )
    }

    #[test]
    fn combines_memory_readings_by_median() {
        let runs = [1900.0, 2100.0, 1950.0]
            .iter()
            .map(|&kb| {
                json!({ "label": "x#1", "procs": [
                    { "name": "mcp-router", "rss_kb": { "init": kb - 100.0, "end": kb } },
                    { "name": "mcp-gateway", "rss_kb": { "end": 3000.0 } },
                ]})
            })
            .collect();
        let v = combine(runs);
        assert_eq!(rss_kb(&v, "mcp-router", "end"), Some(1950.0));
        assert_eq!(rss_kb(&v, "mcp-router", "init"), Some(1850.0));
        assert_eq!(rss_kb(&v, "mcp-gateway", "end"), Some(3000.0));
        assert_eq!(
            v["procs"][0]["rss_kb_runs"]["end"],
            json!([1900.0, 1950.0, 2100.0])
        );
    }

    #[test]
    fn combines_repeated_runs_by_median() {
        let runs = [30.0, 10.0, 20.0]
            .iter()
            .map(|&p| json!({ "label": "x#1", "p50_us": p, "rps": p * 10.0, "errors": 1 }))
            .collect();
        let v = combine(runs);
        assert_eq!(
            (v["p50_us"].as_f64(), v["rps"].as_f64()),
            (Some(20.0), Some(200.0))
        );
        assert_eq!(
            (v["errors"].as_f64(), v["runs"].as_u64()),
            (Some(3.0), Some(3))
        );
        assert_eq!(v["p50_range_us"], json!([10.0, 30.0]));
    }

    /// The report's table for these results.
    fn table_of<const N: usize>(results: [(String, Value); N]) -> String {
        render(&build(&results.into_iter().collect()))
    }

    /// The lines of `table` that contain `needle`.
    fn lines_with<'a>(table: &'a str, needle: &str) -> Vec<&'a str> {
        table.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn checks_tracing_budgets() {
        let otlp = |label: &str, bytes: f64| {
            (
                label.to_string(),
                json!({ "label": label, "bytes_per_span": bytes, "router_bytes_per_span": bytes,
                        "gateway_bytes_per_span": bytes, "router_spans": 2, "gateway_spans": 6,
                        "router_spans_per_request": 2.0, "gateway_spans_per_request": 6.0,
                        "gateway_spans_dropped": 0, "settled": true }),
            )
        };
        let table = table_of([
            load("trace-off-c1", 1, 1000.0, 100.0, 200.0),
            load("trace-on-c1", 1, 960.0, 104.0, 210.0),
            load("trace-ratio-c1", 1, 985.0, 101.0, 201.0),
            load("trace-off-c32", 32, 1000.0, 100.0, 200.0),
            load("trace-on-c32", 32, 940.0, 104.0, 210.0),
            otlp("otlp-on-c1", 250.0),
            otlp("otlp-on-c32", 310.0),
            load("ev-trace-off-c1", 1, 500.0, 300.0, 400.0),
            load("ev-trace-on-c1", 1, 480.0, 310.0, 410.0),
            load("ev-trace-ratio-c1", 1, 496.0, 301.0, 401.0),
        ]);
        let rows = lines_with(&table, "gateway, tracing always_on (both");
        assert_eq!(rows.len(), 2, "{table}");
        assert!(
            rows[0].contains("throughput 0.960× off (-4.0 %)"),
            "{}",
            rows[0]
        );
        assert!(rows[0].ends_with("| met |"));
        assert!(rows[1].ends_with("| **not met** |"), "{}", rows[1]);
        let ratio = lines_with(&table, "traceidratio 0.01 (both")[0];
        assert!(ratio.ends_with("| **not met** |"), "{ratio}");
        // The real-backend rows, for the C that ran.
        let ev = lines_with(&table, "with server-everything (Node) as the backend");
        assert_eq!(ev.len(), 3, "{table}");
        assert!(
            ev[1].contains("(-4.0 %)") && ev[1].ends_with("| met |"),
            "{}",
            ev[1]
        );
        assert!(
            ev[2].contains("(-0.8 %)") && ev[2].ends_with("| met |"),
            "{}",
            ev[2]
        );
        let payload = lines_with(&table, "payload per span")[0];
        assert!(payload.contains("C = 32: 310 B") && payload.ends_with("| **not met** |"));
    }

    #[test]
    fn reports_instructions_against_off() {
        let instr = |label: &str, n: f64| {
            (
                label.to_string(),
                json!({ "label": label, "instructions": n, "requests": 1000 }),
            )
        };
        let table = table_of([
            instr("instr-off-gateway", 75_000_000.0),
            instr("instr-on-gateway", 115_500_000.0),
            instr("instr-ratio-gateway", 82_500_000.0),
            instr("instr-on-router", 1.0),
        ]);
        let rows = lines_with(&table, "Instructions per request");
        assert_eq!(rows.len(), 1, "the router has no off run: {table}");
        assert!(
            rows[0].contains(
                "off 75.0k; always_on 115.5k (+54.0 %); traceidratio 0.01 82.5k (+10.0 %)"
            ),
            "{}",
            rows[0]
        );
        // With the clock readings counted (run.sh's clock_reads), each mode shows them.
        let with_reads = |label: &str, n: f64, reads: f64| {
            (
                label.to_string(),
                json!({ "label": label, "instructions": n, "clock_reads": reads, "requests": 1000 }),
            )
        };
        let table = table_of([
            with_reads("instr-off-gateway", 75_000_000.0, 5_200.0),
            with_reads("instr-on-gateway", 115_500_000.0, 13_400.0),
        ]);
        let rows = lines_with(&table, "Instructions per request");
        assert!(
            rows[0].contains(
                "off 75.0k, 5.2 clock reads; always_on 115.5k (+54.0 %, 13.4 clock reads)"
            ),
            "{}",
            rows[0]
        );
    }

    #[test]
    fn checks_latency_and_throughput_budgets() {
        let table = table_of([
            load("direct-c1", 1, 1.0, 20.0, 40.0),
            load("ws-floor-c1", 1, 1.0, 30.0, 50.0),
            load("router-gateway-c1", 1, 1.0, 100.0, 300.0), // floor 80 / 140: 1.25×, 2.14×
            load("direct-c32", 32, 1000.0, 1.0, 1.0),
            load("gateway-c32", 32, 600.0, 1.0, 1.0),
        ]);
        let line = |needle: &str| lines_with(&table, needle)[0];
        assert!(line("p50 1.25×, p99 2.14×").contains("**not met**"));
        assert!(line("60 % of direct").ends_with("| met |"));
        assert!(line("tracing always_on").contains("n/a"));
    }
}
