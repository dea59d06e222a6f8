//! Prometheus metrics: one registry, rendered as text by `GET /metrics`.
//!
//! Label values are a closed set (forge names, known event names or `other`, outcome names),
//! so an unauthenticated caller cannot grow the series count.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::store::WriterStats;

pub struct Metrics {
    registry: Registry,
    /// Deliveries by forge, event and outcome (queued, ignored, pong, duplicate, rejected).
    pub deliveries: IntCounterVec,
    /// Missed pushes recovered, by project and how (`github_redelivery`, `gitlab_resend`:
    /// redeliveries asked; `refs`: pushes recorded from the ref comparison).
    pub recovered: IntCounterVec,
    /// Rejected deliveries by reason (bad_signature, malformed_body, ...).
    pub rejections: IntCounterVec,
    /// Time from request start to answer, by outcome.
    pub intake_seconds: HistogramVec,
    /// Rejections that could not be queued for recording because the writer was busy.
    pub rejections_not_recorded: IntCounter,
    /// Rejections counted on their source's last recorded one instead of recorded one by one.
    pub rejections_summarized: IntCounter,
    /// What retention removed, by kind (rejections, log_chunks, bodies, segments).
    pub retention_removed: IntCounterVec,
    /// Request bodies being read now: slow or idle clients show here until they are dropped.
    pub bodies_reading: Gauge,
    /// Live-log (Server-Sent Events) streams being fed now.
    pub log_followers: Gauge,
    pub writer: WriterStats,
    /// Reports (commit statuses, chat messages) by kind and outcome (sent, retried,
    /// superseded, failed).
    pub reports: IntCounterVec,
    /// Reports waiting in the outbox.
    pub outbox_pending: prometheus::IntGauge,
    /// Jobs by state, read from the store at each scrape (queued is the queue depth).
    pub jobs: prometheus::IntGaugeVec,
    /// Seconds a job waited in the queue before a worker took it.
    pub queue_wait_seconds: Histogram,
    /// Seconds each stage took, by stage and result.
    pub stage_seconds: HistogramVec,
    /// Rollouts by environment and outcome (deployed, unchanged, rolled_back, skipped,
    /// failed): the rolled_back series counts automatic rollbacks.
    pub deploys: IntCounterVec,
    /// Rollbacks by hand (`deploybot rollback`, the rollback action), by environment.
    pub rollbacks_by_hand: IntCounterVec,
}

/// A gauge of things in progress, counted by guards: whatever way one ends (answer, error,
/// dropped future), its guard's drop counts it out.
#[derive(Clone)]
pub struct Gauge(prometheus::IntGauge);

/// One thing in progress; counted out when dropped.
pub struct InProgress(prometheus::IntGauge);

impl Gauge {
    pub fn guard(&self) -> InProgress {
        self.0.inc();
        InProgress(self.0.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("deploybot".into()), None)?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "deliveries_total",
                "Webhook deliveries by forge, event and outcome",
            ),
            &["forge", "event", "outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("rejections_total", "Refused deliveries by reason"),
            &["reason"],
        )?;
        let intake_seconds = HistogramVec::new(
            HistogramOpts::new(
                "intake_seconds",
                "Webhook intake latency, request to answer",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["outcome"],
        )?;
        let rejections_not_recorded = IntCounter::new(
            "rejections_not_recorded_total",
            "Rejections only logged because the store writer was busy",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "store_commit_batch_size",
                "Deliveries per store transaction",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new("store_commit_seconds", "Time to write and sync one batch").buckets(
                vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
                ],
            ),
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        let recovered = IntCounterVec::new(
            Opts::new(
                "recovered_total",
                "Missed pushes recovered, by project and how",
            ),
            &["project", "how"],
        )?;
        registry.register(Box::new(recovered.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(intake_seconds.clone()))?;
        registry.register(Box::new(rejections_not_recorded.clone()))?;
        let rejections_summarized = IntCounter::new(
            "rejections_summarized_total",
            "Rejections counted on their source's last recorded one, not recorded one by one",
        )?;
        registry.register(Box::new(rejections_summarized.clone()))?;
        let retention_removed = IntCounterVec::new(
            Opts::new(
                "retention_removed_total",
                "Rows, bodies and segment files retention removed, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(retention_removed.clone()))?;
        let bodies_reading = Gauge(prometheus::IntGauge::new(
            "intake_bodies_reading",
            "Webhook request bodies being read now",
        )?);
        registry.register(Box::new(bodies_reading.0.clone()))?;
        let log_followers = Gauge(prometheus::IntGauge::new(
            "log_followers",
            "Live job-log streams being fed now",
        )?);
        registry.register(Box::new(log_followers.0.clone()))?;
        let reports = IntCounterVec::new(
            Opts::new(
                "reports_total",
                "Commit statuses and chat messages by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let outbox_pending = prometheus::IntGauge::new(
            "outbox_pending",
            "Reports waiting to be delivered (including ones backing off)",
        )?;
        let jobs = prometheus::IntGaugeVec::new(
            Opts::new("jobs", "Jobs by state (queued is the queue depth)"),
            &["state"],
        )?;
        let queue_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "queue_wait_seconds",
                "Time a job waited before a worker took it",
            )
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0]),
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_seconds", "Time each build stage took").buckets(vec![
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0,
            ]),
            &["stage", "result"],
        )?;
        let deploys = IntCounterVec::new(
            Opts::new("deploys_total", "Rollouts by environment and outcome"),
            &["environment", "outcome"],
        )?;
        let rollbacks_by_hand = IntCounterVec::new(
            Opts::new("rollbacks_by_hand_total", "Rollbacks asked for by a person"),
            &["environment"],
        )?;
        registry.register(Box::new(deploys.clone()))?;
        registry.register(Box::new(rollbacks_by_hand.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(queue_wait_seconds.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(Metrics {
            registry,
            deliveries,
            recovered,
            rejections,
            intake_seconds,
            rejections_not_recorded,
            rejections_summarized,
            retention_removed,
            bodies_reading,
            log_followers,
            writer: WriterStats {
                batch_size,
                commit_seconds,
            },
            reports,
            outbox_pending,
            jobs,
            queue_wait_seconds,
            stage_seconds,
            deploys,
            rollbacks_by_hand,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails for a malformed metric family, which we never build.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "Metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
