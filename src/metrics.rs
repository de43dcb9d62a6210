//! Prometheus metrics, with the `prometheus-client` crate: a registry owned by each runner (no
//! process-wide recorder, so an embedding application keeps its own, and two runners in one
//! process never mix their counts), typed label sets, and the text format `/metrics` serves.
//!
//! The operation metrics are counted where the scheduler publishes the changes it made
//! (creation, claim, end: `scheduler::transition`), each a few atomic adds; the gauges are
//! read from the runner's own counts when scraped; the store records its commits; the gRPC
//! metrics come from a tower layer around the services (`server`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::OperationRecord;

/// Labels of a per-kind metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The task kind.
    pub kind: String,
}

/// Labels of a schedule's fire: what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FireLabels {
    /// `started` (an operation), `skipped` (overlap policy, or missed past the catch-up
    /// window) or `failed` (the task could not start: say, its kind is gone).
    pub result: &'static str,
}

/// Labels of a per-kind, per-end-state metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// The task kind.
    pub kind: String,
    /// `SUCCEEDED`, `FAILED` or `CANCELLED`.
    pub state: String,
}

/// Labels of the gRPC server metrics (the names of the go-grpc-prometheus convention).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `unary`, `server_stream`, `client_stream`, `bidi_stream`.
    pub grpc_type: &'static str,
    /// The full service name (`unknown` for a path no served service has: the label values
    /// are a fixed set, so no client can make the registry grow).
    pub grpc_service: &'static str,
    /// The method name (`unknown` likewise).
    pub grpc_method: &'static str,
}

impl GrpcLabels {
    /// These labels and a status code name.
    fn with_code(self, grpc_code: &'static str) -> GrpcCodeLabels {
        GrpcCodeLabels {
            grpc_type: self.grpc_type,
            grpc_service: self.grpc_service,
            grpc_method: self.grpc_method,
            grpc_code,
        }
    }
}

/// [`GrpcLabels`] and the status code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    /// As in [`GrpcLabels`].
    pub grpc_type: &'static str,
    /// As in [`GrpcLabels`].
    pub grpc_service: &'static str,
    /// As in [`GrpcLabels`].
    pub grpc_method: &'static str,
    /// The status code name, e.g. `OK`, `NOT_FOUND`.
    pub grpc_code: &'static str,
}

type HistogramFn = fn() -> Histogram;

fn seconds() -> Histogram {
    // 1 ms to about 70 minutes.
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

fn call_seconds() -> Histogram {
    // 0.5 ms to about 75 s.
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

/// What a store reports about its commits (`oprun_store_commit_seconds`,
/// `oprun_store_batch_size`); cheap to clone, all clones count together.
#[derive(Clone, Debug)]
pub struct CommitStats {
    /// How long each commit took.
    pub seconds: Histogram,
    /// How many writes each commit carried.
    pub batch_size: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            // 0.1 ms to about 3 s.
            seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 to 4096.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

impl CommitStats {
    /// Records one commit of `writes` writes that took `took`.
    pub fn commit(&self, writes: usize, took: Duration) {
        self.seconds.observe(took.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // batch sizes are small
        self.batch_size.observe(writes as f64);
    }
}

/// One gRPC method's series in one [`Metrics`], kept by the caller that counts its calls
/// ([`Metrics::call_started`], [`Metrics::call_handled`]): each series is looked up (its
/// labels hashed, the family locked) at its first use only, and made then, so that only
/// methods called are exposed.
#[derive(Debug, Default)]
pub struct CallSeries {
    started: std::sync::OnceLock<Counter>,
    seconds: std::sync::OnceLock<Histogram>,
    /// Handled with OK (other codes are looked up each time).
    ok: std::sync::OnceLock<Counter>,
}

/// A runner's metrics.
pub struct Metrics {
    registry: Registry,
    submitted: Family<KindLabels, Counter>,
    rate_limited: Family<KindLabels, Counter>,
    finished: Family<EndLabels, Counter>,
    running: Family<KindLabels, Gauge>,
    queued: Family<KindLabels, Gauge>,
    queue_seconds: Family<KindLabels, Histogram, HistogramFn>,
    run_seconds: Family<EndLabels, Histogram, HistogramFn>,
    grpc_started: Family<GrpcLabels, Counter>,
    grpc_handled: Family<GrpcCodeLabels, Counter>,
    grpc_seconds: Family<GrpcLabels, Histogram, HistogramFn>,
    schedule_fires: Family<FireLabels, Counter>,
    schedule_fire_delay: Histogram,
    /// One scrape at a time (the gauges are set, then encoded).
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every oprun metric; `store` is the store's commit statistics, if it
    /// keeps them.
    pub fn new(store: Option<CommitStats>) -> Self {
        let mut registry = Registry::default();
        let submitted = Family::<KindLabels, Counter>::default();
        let rate_limited = Family::<KindLabels, Counter>::default();
        let finished = Family::<EndLabels, Counter>::default();
        let running = Family::<KindLabels, Gauge>::default();
        let queued = Family::<KindLabels, Gauge>::default();
        let queue_seconds =
            Family::<KindLabels, Histogram, HistogramFn>::new_with_constructor(seconds);
        let run_seconds =
            Family::<EndLabels, Histogram, HistogramFn>::new_with_constructor(seconds);
        let grpc_started = Family::<GrpcLabels, Counter>::default();
        let grpc_handled = Family::<GrpcCodeLabels, Counter>::default();
        let grpc_seconds =
            Family::<GrpcLabels, Histogram, HistogramFn>::new_with_constructor(call_seconds);
        registry.register(
            "oprun_operations_submitted",
            "Operations submitted (stored) by this node",
            submitted.clone(),
        );
        registry.register(
            "oprun_rate_limited_claims",
            "Claims by this node in which a kind's start rate held due work back",
            rate_limited.clone(),
        );
        registry.register(
            "oprun_operations_finished",
            "Operations this node ended, by kind and end state",
            finished.clone(),
        );
        registry.register(
            "oprun_operations_running",
            "Operations running on this node",
            running.clone(),
        );
        registry.register(
            "oprun_operations_queued",
            "Operations waiting (queued, delayed or backing off), as this node counts them",
            queued.clone(),
        );
        registry.register(
            "oprun_operation_queue_seconds",
            "Time from submission to the first start",
            queue_seconds.clone(),
        );
        registry.register(
            "oprun_operation_run_seconds",
            "Time from the last start to the end, by end state",
            run_seconds.clone(),
        );
        if let Some(store) = store {
            registry.register(
                "oprun_store_commit_seconds",
                "Time each store commit took",
                store.seconds,
            );
            registry.register(
                "oprun_store_batch_size",
                "Writes carried by each store commit",
                store.batch_size,
            );
        }
        let schedule_fires = Family::<FireLabels, Counter>::default();
        let schedule_fire_delay = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "oprun_schedule_fires",
            "Fire times of schedules this node decided or started, by what became of them",
            schedule_fires.clone(),
        );
        registry.register(
            "oprun_schedule_fire_delay_seconds",
            "Time from a fire time to its operation's creation, on the node that created it",
            schedule_fire_delay.clone(),
        );
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            grpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            grpc_handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its status (for a stream: its end)",
            grpc_seconds.clone(),
        );
        Self {
            registry,
            submitted,
            rate_limited,
            finished,
            running,
            queued,
            queue_seconds,
            run_seconds,
            grpc_started,
            grpc_handled,
            grpc_seconds,
            schedule_fires,
            schedule_fire_delay,
            scrape: Mutex::new(()),
        }
    }

    /// A new operation was stored.
    pub fn submitted(&self, kind: &str) {
        self.submitted
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// `n` fire times of schedules became `result` (see [`FireLabels`]).
    pub fn schedule_fires(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.schedule_fires
                .get_or_create(&FireLabels { result })
                .inc_by(n);
        }
    }

    /// A schedule's fire created its operation `delay` after the fire time.
    pub fn schedule_fire_delay(&self, delay: Duration) {
        self.schedule_fire_delay.observe(delay.as_secs_f64());
    }

    /// A claim of this node found `kind`'s start rate holding due work back.
    pub fn rate_limited(&self, kind: &str) {
        self.rate_limited
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// An operation started (was claimed by this node).
    pub fn started(&self, record: &OperationRecord) {
        if record.attempt != 1 {
            return;
        }
        if let Some(waited) = record
            .start_time
            .and_then(|s| s.duration_since(record.create_time).ok())
        {
            self.queue_seconds
                .get_or_create(&KindLabels {
                    kind: record.kind.clone(),
                })
                .observe(waited.as_secs_f64());
        }
    }

    /// This node wrote an operation's end.
    pub fn finished(&self, record: &OperationRecord) {
        let labels = EndLabels {
            kind: record.kind.clone(),
            state: record.state.as_str().to_owned(),
        };
        if let Some(ran) = record
            .start_time
            .zip(record.end_time)
            .and_then(|(s, e)| e.duration_since(s).ok())
        {
            self.run_seconds
                .get_or_create(&labels)
                .observe(ran.as_secs_f64());
        }
        self.finished.get_or_create(&labels).inc();
    }

    /// A gRPC call of `series`' method (named by `labels`) started.
    pub fn call_started(&self, series: &CallSeries, labels: &GrpcLabels) {
        series
            .started
            .get_or_init(|| self.grpc_started.get_or_create(labels).clone())
            .inc();
    }

    /// A gRPC call of `series`' method (named by `labels`) ended with `code` (a
    /// `google.rpc.Code` name) after `took`.
    pub fn call_handled(
        &self,
        series: &CallSeries,
        labels: GrpcLabels,
        code: &'static str,
        took: Duration,
    ) {
        series
            .seconds
            .get_or_init(|| self.grpc_seconds.get_or_create(&labels).clone())
            .observe(took.as_secs_f64());
        let handled = |code| {
            self.grpc_handled
                .get_or_create(&labels.with_code(code))
                .clone()
        };
        if code == "OK" {
            series.ok.get_or_init(|| handled(code)).inc();
        } else {
            handled(code).inc();
        }
    }

    /// The Prometheus text exposition, with the gauges set from `gauges` (kind, queued,
    /// running) first.
    pub fn encode(&self, gauges: &[(String, usize, usize)]) -> String {
        let _one = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.queued.clear();
        self.running.clear();
        for (kind, queued, running) in gauges {
            let labels = KindLabels { kind: kind.clone() };
            self.queued
                .get_or_create(&labels)
                .set(i64::try_from(*queued).unwrap_or(i64::MAX));
            self.running
                .get_or_create(&labels)
                .set(i64::try_from(*running).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
