//! Our batch span processor: a bounded queue that grows only as needed, drained by one
//! exporter thread on batch size, on a timer, on flush and at shutdown.
//!
//! The request path (`on_end`) takes a mutex for a push and never blocks on export;
//! when the queue is full the span is dropped and counted ([`BatchStats::dropped`]),
//! with at most one warning per [`DROP_WARN_INTERVAL`]. The exporter thread runs the
//! exporter's future with `futures_lite::future::block_on`; its own I/O creates no
//! spans.
//!
//! For OTLP, `on_end` encodes the span to protobuf right away (see [`super::encode`])
//! into the batch being filled, and the span's memory is freed on the thread that
//! made it: the exporter thread only ever sees finished byte buffers, one per batch,
//! which are recycled. (Handing `SpanData` to the exporter thread made the two threads
//! contend for the allocator; docs/benchmark.md has the numbers.) The stdout exporter
//! still gets the spans themselves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::export::{Accepted, Exporter};

/// Shortest time between two warnings about dropped spans.
pub const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Extra time `force_flush` waits beyond the export timeout of each batch queued.
pub const FLUSH_SLACK: Duration = Duration::from_secs(1);
/// An exported batch's buffer is kept for the next one only up to this capacity per
/// span of the batch size (bytes), so one burst of large spans does not pin its
/// memory: 256 KiB for the router's 128 spans, 1 MiB for the gateway's 512. With a
/// flat 256 KiB, the gateway's batches of `span_detail = "basic"` (~600 B a span) were
/// never kept, and each one grew anew from empty by doubling (callgrind counted +1.7k
/// instructions per request in those copies; it counts a `rep movsb` byte by byte, so
/// the time is smaller).
pub const MAX_SPARE_BYTES_PER_SPAN: usize = 2048;

/// Counters readable from any thread (exposed as metrics).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Spans handed to the exporter successfully.
    pub exported: AtomicU64,
    /// Spans dropped: queue full, or their export failed.
    pub dropped: AtomicU64,
    /// Exports that failed (after retries).
    pub failed_exports: AtomicU64,
}

/// One batch in the making: OTLP-encoded span entries, or the spans themselves.
#[derive(Debug, Default)]
struct Chunk {
    /// `ScopeSpans.spans` entries (OTLP), empty for the stdout exporter.
    bytes: Vec<u8>,
    /// The spans (stdout exporter only).
    records: Vec<SpanData>,
    /// How many spans the chunk holds.
    spans: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Full batches first, then the one being filled; at most `max_queue` spans in all.
    chunks: VecDeque<Chunk>,
    /// Spans in `chunks`.
    queued: usize,
    /// An exported batch's buffer, kept for the next one.
    spare: Option<Vec<u8>>,
    flush_requested: u64,
    flush_done: u64,
    shutdown: bool,
    stopped: bool,
    /// When each kind of drop was last warned of ([`Dropped`] as the index): a full queue
    /// and a failed export each at most once per [`DROP_WARN_INTERVAL`], so the one
    /// that names the collector's failure is not hidden by the other.
    last_drop_warning: [Option<Instant>; 3],
    /// Spans of the batch the exporter thread is sending (out of the queue).
    exporting: usize,
    /// The shutdown's deadline passed during that export: its spans were counted as
    /// dropped then, and its outcome counts nothing more.
    written_off: bool,
}

/// Why spans were dropped (each warned of on its own schedule).
#[derive(Clone, Copy)]
enum Dropped {
    QueueFull = 0,
    ExportFailed = 1,
    /// The collector took the batch but rejected some of its spans (OTLP partial
    /// success), or took it all with a warning.
    Rejected = 2,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    stats: Arc<BatchStats>,
    max_queue: usize,
    batch: usize,
    delay: Duration,
    export_timeout: Duration,
    /// Spans are encoded at `on_end` (OTLP) rather than kept (stdout).
    encoded: bool,
}

impl Shared {
    /// Adds one span to the batch being filled (`write` appends it to the chunk),
    /// unless the queue is full or shutdown has begun: then the span is counted as
    /// dropped and `write` is not called. Wakes the exporter when a batch fills up.
    fn push(&self, write: impl FnOnce(&mut Chunk)) {
        let mut st = self.state.lock().unwrap();
        if st.shutdown {
            // Ended after shutdown began: nothing will export it.
            drop(st);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if st.queued >= self.max_queue {
            drop(st);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn_rate_limited(self, Dropped::QueueFull, "span queue full; dropping spans");
            return;
        }
        let batch = self.batch;
        if st.chunks.back().is_none_or(|c| c.spans >= batch) {
            let bytes = st.spare.take().unwrap_or_default();
            st.chunks.push_back(Chunk {
                bytes,
                records: Vec::new(),
                spans: 0,
            });
        }
        let chunk = st.chunks.back_mut().expect("a chunk was just ensured");
        write(chunk);
        chunk.spans += 1;
        let full = chunk.spans >= batch;
        st.queued += 1;
        let wake = full && st.chunks.len() == 1;
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// Where spans that encode themselves ([`super::span::RecordingSpan`]) go when they
/// end: the same queue as the processor's, without going through the SDK.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
#[derive(Debug, Clone)]
pub(crate) struct Queue(Arc<Shared>);

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl Queue {
    /// Appends one encoded `ScopeSpans.spans` entry (see [`Shared::push`]).
    pub(crate) fn push(&self, write: impl FnOnce(&mut Vec<u8>)) {
        self.0.push(|c| write(&mut c.bytes));
    }

    /// Takes every queued span's bytes (tests read what spans wrote).
    #[cfg(all(test, feature = "otlp-http"))]
    pub(crate) fn take_bytes(&self) -> Vec<u8> {
        let mut st = self.0.state.lock().unwrap();
        st.queued = 0;
        st.chunks.drain(..).flat_map(|c| c.bytes).collect()
    }
}

/// The span processor registered with the SDK tracer provider.
#[derive(Debug)]
pub struct BatchProcessor {
    shared: Arc<Shared>,
}

impl BatchProcessor {
    /// Starts the exporter thread. `scope` is the name of the process's one tracer.
    pub fn start(
        mut exporter: Exporter,
        resource: &Resource,
        scope: &str,
        max_queue: usize,
        batch: usize,
        delay: Duration,
        export_timeout: Duration,
    ) -> (BatchProcessor, Arc<BatchStats>) {
        let stats = Arc::new(BatchStats::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            stats: stats.clone(),
            max_queue,
            batch,
            delay,
            export_timeout,
            encoded: exporter.takes_encoded(),
        });
        exporter.set_resource(resource, scope);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || run(worker, exporter))
            .expect("spawn the span exporter thread");
        (BatchProcessor { shared }, stats)
    }

    /// The queue, for spans that encode themselves; `None` when the exporter takes
    /// the spans themselves (stdout).
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    pub(crate) fn queue(&self) -> Option<Queue> {
        self.shared.encoded.then(|| Queue(self.shared.clone()))
    }
}

fn run(shared: Arc<Shared>, mut exporter: Exporter) {
    let mut deadline = Instant::now() + shared.delay;
    loop {
        let (chunk, flush_target, shutting_down) = {
            let mut st = shared.state.lock().unwrap();
            loop {
                let flush = st.flush_requested > st.flush_done;
                let full = st.chunks.front().is_some_and(|c| c.spans >= shared.batch);
                if st.shutdown || flush || full {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = shared.wake.wait_timeout(st, deadline - now).unwrap().0;
            }
            let chunk = st.chunks.pop_front();
            if let Some(c) = &chunk {
                st.queued -= c.spans;
                st.exporting = c.spans;
            }
            let target = (st.queued == 0 && st.flush_requested > st.flush_done)
                .then_some(st.flush_requested);
            (chunk, target, st.shutdown)
        };
        if let Some(mut chunk) = chunk {
            let n = chunk.spans as u64;
            let result = if shared.encoded {
                exporter.export_encoded(&mut chunk.bytes, shared.export_timeout)
            } else {
                exporter
                    .export_records(std::mem::take(&mut chunk.records))
                    .map(|()| Accepted::default())
            };
            let written_off = {
                let mut st = shared.state.lock().unwrap();
                st.exporting = 0;
                std::mem::take(&mut st.written_off)
            };
            match result {
                _ if written_off => {}
                Ok(accepted) => {
                    // Spans the collector rejected are dropped, not exported.
                    let rejected = accepted.rejected.min(n);
                    shared
                        .stats
                        .exported
                        .fetch_add(n - rejected, Ordering::Relaxed);
                    shared.stats.dropped.fetch_add(rejected, Ordering::Relaxed);
                    let said = accepted.message.as_deref().unwrap_or("no message");
                    if rejected > 0 {
                        let msg = format!(
                            "collector rejected {rejected} of {n} span(s) exported: {said}"
                        );
                        warn_rate_limited(&shared, Dropped::Rejected, &msg);
                    } else if accepted.message.is_some() {
                        let msg = format!("collector took {n} span(s) with a warning: {said}");
                        warn_rate_limited(&shared, Dropped::Rejected, &msg);
                    }
                }
                Err(e) => {
                    shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
                    shared.stats.failed_exports.fetch_add(1, Ordering::Relaxed);
                    warn_rate_limited(
                        &shared,
                        Dropped::ExportFailed,
                        &format!("span export failed, {n} span(s) dropped: {e}"),
                    );
                }
            }
            if shared.encoded
                && chunk.bytes.capacity() <= shared.batch.saturating_mul(MAX_SPARE_BYTES_PER_SPAN)
            {
                chunk.bytes.clear();
                shared.state.lock().unwrap().spare = Some(chunk.bytes);
            }
        }
        let mut st = shared.state.lock().unwrap();
        if let Some(t) = flush_target {
            st.flush_done = st.flush_done.max(t);
            shared.done.notify_all();
        }
        // A new period starts after every export: spans left behind wait for a full
        // batch or the next tick, not go out at once in small batches.
        deadline = Instant::now() + shared.delay;
        if st.queued == 0 && shutting_down {
            st.spare = None;
            drop(st);
            // Before `stopped`: what the exporter still writes (the stdout tree's spans
            // that never saw their root) is out before the process may exit.
            exporter.shutdown();
            let mut st = shared.state.lock().unwrap();
            st.stopped = true;
            shared.done.notify_all();
            return;
        }
        if st.queued == 0 {
            // Idle: give back what a burst grew.
            st.chunks.shrink_to_fit();
        }
    }
}

fn warn_rate_limited(shared: &Shared, why: Dropped, msg: &str) {
    let mut st = shared.state.lock().unwrap();
    let now = Instant::now();
    let last = &mut st.last_drop_warning[why as usize];
    if last.is_none_or(|t| now.duration_since(t) >= DROP_WARN_INTERVAL) {
        *last = Some(now);
        drop(st);
        // A span is pushed while its request's task is polled: the warning is about
        // the queue, not about that request, so it carries no trace ids.
        crate::logger::outside_trace(|| {
            log::warn!(
                "{msg} (dropped so far: {})",
                shared.stats.dropped.load(Ordering::Relaxed)
            )
        });
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.shared.encoded {
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            self.shared
                .push(|c| super::encode::append_span(&span, &mut c.bytes));
        } else {
            // Cut before it is queued: the queue is bounded in spans, not bytes.
            let span = super::stdout::bounded(span);
            self.shared.push(|c| c.records.push(span));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let s = &self.shared;
        let mut st = s.state.lock().unwrap();
        st.flush_requested += 1;
        let want = st.flush_requested;
        s.wake.notify_one();
        // Every queued batch may take up to the export timeout.
        let batches = st.queued.div_ceil(s.batch).max(1) as u32;
        let allowed = s.export_timeout * batches + FLUSH_SLACK;
        let limit = Instant::now() + allowed;
        while st.flush_done < want && !st.stopped {
            let now = Instant::now();
            if now >= limit {
                return Err(OTelSdkError::Timeout(allowed));
            }
            st = s.done.wait_timeout(st, limit - now).unwrap().0;
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let s = &self.shared;
        let mut st = s.state.lock().unwrap();
        if st.shutdown {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        st.shutdown = true;
        s.wake.notify_one();
        let limit = Instant::now() + timeout;
        while !st.stopped {
            let now = Instant::now();
            if now >= limit {
                // What the deadline leaves behind is lost: taken out of the queue (the
                // exporter thread, still busy, must not send or count it again), counted
                // and said, like any other drop; so is the batch being sent, which the
                // process's exit will cut off (its outcome, if it comes, counts
                // nothing more).
                let queued = st.queued as u64;
                let sending = st.exporting as u64;
                st.chunks.clear();
                st.queued = 0;
                st.written_off = sending > 0;
                drop(st);
                let left = queued + sending;
                if left > 0 {
                    s.stats.dropped.fetch_add(left, Ordering::Relaxed);
                    log::warn!(
                        "tracing: {left} span(s) not exported within the shutdown deadline ({} ms; {sending} of them in an export still running); dropped",
                        timeout.as_millis()
                    );
                }
                return Err(OTelSdkError::Timeout(timeout));
            }
            st = s.done.wait_timeout(st, limit - now).unwrap().0;
        }
        Ok(())
    }

    fn set_resource(&mut self, _resource: &Resource) {}
}

#[cfg(all(test, feature = "otlp-http"))]
mod tests {
    use super::*;
    use crate::config::{Dur, OtlpProtocol, TracingConfig};
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// The queue holds at most `max_queue` spans whatever arrives, counts the rest as
    /// dropped, and a failed export at shutdown counts its spans too.
    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        // A port nobody listens on: exports fail with "connection refused".
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let timeout = Duration::from_millis(300);
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            otlp_timeout: Dur(timeout),
            ..TracingConfig::default()
        };
        let exporter = Exporter::http(&cfg).unwrap();
        assert!(exporter.takes_encoded());
        // A batch larger than the queue and an hour's delay: nothing is exported before
        // shutdown, so what the queue holds is exactly what is counted here.
        let (processor, stats) = BatchProcessor::start(
            exporter,
            &Resource::builder_empty().build(),
            "test",
            10,
            100,
            Duration::from_secs(3600),
            timeout,
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..25 {
            tracer.start("s").end();
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 15);
        provider
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 25);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
        assert_eq!(stats.failed_exports.load(Ordering::Relaxed), 1);
    }

    /// Spans a shutdown's deadline leaves in the queue are counted as dropped (and
    /// said), not lost without a trace.
    #[test]
    fn spans_left_at_the_shutdown_deadline_count_as_dropped() {
        // A collector that takes connections and never answers: each export waits
        // out its timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(200);
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
            otlp_timeout: Dur(timeout),
            ..TracingConfig::default()
        };
        const SPANS: u64 = 100;
        const BATCH: usize = 10;
        let (processor, stats) = BatchProcessor::start(
            Exporter::http(&cfg).unwrap(),
            &Resource::builder_empty().build(),
            "test",
            SPANS as usize,
            BATCH,
            Duration::from_secs(3600),
            timeout,
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..SPANS {
            tracer.start("s").end();
        }
        // Ten exports of 200 ms each do not fit in 300 ms.
        let r = provider.shutdown_with_timeout(Duration::from_millis(300));
        assert!(r.is_err(), "{r:?}");
        // All of them, the batch still being exported included (the exit that follows
        // a shutdown would cut it off before its failure could count it).
        assert_eq!(stats.dropped.load(Ordering::Relaxed), SPANS);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
        // And only once: the batch still being exported counts nothing when it fails,
        // and nothing goes out after it (the queue was emptied; before, the thread went
        // on exporting what was counted, 200 ms a batch, and counted it again).
        // Watched for 1 s: the time of that batch and four more.
        let watch = std::time::Instant::now();
        while watch.elapsed() < Duration::from_secs(1)
            && stats.dropped.load(Ordering::Relaxed) <= SPANS
        {
            std::thread::yield_now();
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), SPANS);
        drop(silent);
    }

    /// Reads one HTTP/1.1 request with a `Content-Length` body from `r`.
    fn read_request(r: &mut impl std::io::BufRead) -> Option<Vec<u8>> {
        let mut len = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        Some(body)
    }

    /// Spans go out in batches of `max_export_batch_size` on one connection when a
    /// batch fills, the rest at flush; each body is a valid export request.
    #[test]
    fn full_batches_go_out_at_once_and_the_rest_at_flush() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<String>)>();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let mut w = stream.try_clone().unwrap();
                let mut r = std::io::BufReader::new(stream);
                while let Some(body) = read_request(&mut r) {
                    let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    let names = req.resource_spans[0].scope_spans[0]
                        .spans
                        .iter()
                        .map(|s| s.name.clone())
                        .collect();
                    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                    if tx.send((conn, names)).is_err() {
                        return;
                    }
                }
            }
        });
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..TracingConfig::default()
        };
        let (processor, stats) = BatchProcessor::start(
            Exporter::http(&cfg).unwrap(),
            &Resource::builder_empty().build(),
            "test",
            100,
            4,
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        for i in 0..10 {
            tracer.start(format!("s{i}")).end();
        }
        // Two full batches leave without waiting for the hour-long timer.
        let wait = Duration::from_secs(10);
        let first = rx.recv_timeout(wait).unwrap();
        let second = rx.recv_timeout(wait).unwrap();
        assert_eq!(first.1, ["s0", "s1", "s2", "s3"]);
        assert_eq!(second.1, ["s4", "s5", "s6", "s7"]);
        provider.force_flush().unwrap();
        let third = rx.recv_timeout(wait).unwrap();
        assert_eq!(third.1, ["s8", "s9"]);
        assert_eq!(
            (first.0, second.0, third.0),
            (0, 0, 0),
            "one kept connection"
        );
        assert_eq!(stats.exported.load(Ordering::Relaxed), 10);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        provider
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }
}

#[cfg(test)]
mod stdout_tests {
    use super::*;
    use crate::telemetry::attrs::MAX_VALUE_BYTES;
    use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
    use opentelemetry::{Array, KeyValue, Value};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// The queue is bounded in spans, so a span queued for the stdout exporter must
    /// have a bounded size: a peer's 1 MB tool name or error text is cut as OTLP cuts
    /// it (before, a stdout nobody drained held 6.7 MB per such request).
    #[test]
    fn a_span_queued_for_stdout_holds_no_string_over_the_bound() {
        // No exporter thread: what `on_end` queues stays in the queue to be read here.
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            stats: Arc::default(),
            max_queue: 8,
            batch: 8,
            delay: Duration::from_secs(3600),
            export_timeout: Duration::from_secs(1),
            encoded: false,
        });
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchProcessor {
                shared: shared.clone(),
            })
            .build();
        let long = "é".repeat(500_000);
        let mut s = provider.tracer("t").start("http.request");
        s.set_attribute(KeyValue::new("gen_ai.tool.name", long.clone()));
        s.set_attribute(KeyValue::new(
            "list",
            Value::Array(Array::String(vec![long.clone().into(), "short".into()])),
        ));
        s.add_event(long.clone(), vec![KeyValue::new("e", long.clone())]);
        s.set_status(Status::error(long.clone()));
        s.end();
        let q = {
            let mut st = shared.state.lock().unwrap();
            // Lets the provider's shutdown end at once.
            st.stopped = true;
            st.chunks[0].records.pop().expect("the span was queued")
        };
        let fits = |t: &str| t.len() <= MAX_VALUE_BYTES && t.len() >= MAX_VALUE_BYTES - 1;
        let Value::String(v) = &q.attributes[0].value else {
            panic!("{:?}", q.attributes[0])
        };
        assert!(fits(v.as_str()), "{}", v.as_str().len());
        let Value::Array(Array::String(vs)) = &q.attributes[1].value else {
            panic!("{:?}", q.attributes[1])
        };
        assert!(fits(vs[0].as_str()) && vs[1].as_str() == "short");
        let e = &q.events.events[0];
        assert!(fits(&e.name) && fits(&e.attributes[0].value.as_str()));
        let Status::Error { description } = &q.status else {
            panic!("{:?}", q.status)
        };
        assert!(fits(description));
    }
}
