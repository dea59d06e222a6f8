//! `POST /hooks/{project}`: raw body → verify → parse → record → answer.
//!
//! The order matters: nothing from the body is trusted before its signature is checked over
//! the exact bytes received, and nothing 2xx is answered before the store has committed.
//! This handler makes no network calls.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::http::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use tracing::{field, Instrument};

use super::budget::Reservation;
use super::event::PullSummary;
use super::pull::{PullBuild, PullOutcome};
use super::rejections::Verdict;
use super::{BodyBudget, IntakeError, RejectionBudget};
use crate::config::{Project, ServerSettings, Settings};
use crate::domain::DeliveryId;
use crate::forge::{self, DeliveryHeaders, Forge, HeaderSource, Hook, HookError, VerifyContext};
use crate::metrics::Metrics;
use crate::store::{
    Action, Jobs, NewDelivery, NewJob, NewReport, Origin, PullInfo, Recorded, Rejection, Store,
};

/// What every intake request shares.
pub struct IntakeState {
    pub settings: Arc<Settings>,
    /// Wakes the worker when a job is queued (it also polls, so a lost wake-up only delays).
    pub wake: Arc<tokio::sync::Notify>,
    /// Wakes the report sender when a status was queued with a job.
    pub reports: Arc<tokio::sync::Notify>,
    pub bodies: BodyBudget,
    /// Which rejections are recorded one by one and which only counted, per source.
    pub rejections: RejectionBudget,
    pub store: Store,
    /// Reports the end of the queued jobs a closed pull request canceled (a running one's
    /// worker reports its own).
    pub jobs: Arc<Jobs>,
    pub metrics: Arc<Metrics>,
}

struct Headers<'a>(&'a HeaderMap);

impl HeaderSource for Headers<'_> {
    fn header(&self, name: &'static str) -> Result<Option<&str>, HookError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) => value.to_str().map(Some).map_err(|_| HookError::BadHeader {
                header: name,
                reason: "not visible ASCII".into(),
            }),
        }
    }
}

/// What is known about a delivery so far; filled in as it is checked, and used to record a
/// rejection with as much context as was gathered.
#[derive(Default)]
struct Seen {
    forge: Option<&'static dyn Forge>,
    delivery: Option<DeliveryHeaders>,
}

pub async fn receive(
    request: HttpRequest,
    project: web::Path<String>,
    payload: web::Payload,
    state: web::Data<IntakeState>,
) -> Result<HttpResponse, IntakeError> {
    let started = Instant::now();
    let received_at = OffsetDateTime::now_utc();
    let span = tracing::info_span!(
        "delivery",
        project = %project.as_str(),
        delivery_id = field::Empty,
        forge = field::Empty,
        event = field::Empty,
        repo = field::Empty,
        git_ref = field::Empty,
        sha = field::Empty,
    );
    let mut seen = Seen::default();
    let result = accept(&request, &project, payload, &state, received_at, &mut seen)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    let forge_label = seen.forge.map_or("unknown", |f| f.kind().as_str());
    let event_label = match (seen.forge, &seen.delivery) {
        (Some(forge), Some(delivery)) => forge.event_label(&delivery.event),
        _ => "unknown",
    };
    let outcome = match &result {
        Ok(answer) => answer.status,
        Err(_) => "rejected",
    };
    state
        .metrics
        .deliveries
        .with_label_values(&[forge_label, event_label, outcome])
        .inc();
    state
        .metrics
        .intake_seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => {
            tracing::info!(
                status = answer.status,
                job = answer.job,
                "Delivery answered"
            );
            Ok(answer.into_response())
        }
        Err(error) => {
            let peer = request.peer_addr().map(|a| a.ip());
            reject(&state, &project, &seen, &error, peer, received_at);
            Err(error)
        }
    }
}

/// Counts a rejection and records it (best effort, off the answer path), unless its source
/// has used its budget: then it is counted on the source's last recorded rejection instead.
fn reject(
    state: &IntakeState,
    project: &str,
    seen: &Seen,
    error: &IntakeError,
    peer: Option<std::net::IpAddr>,
    received_at: OffsetDateTime,
) {
    state
        .metrics
        .rejections
        .with_label_values(&[error.label()])
        .inc();
    if let IntakeError::Store(cause) = error {
        tracing::error!(error = %cause, "Delivery not recorded: store failed");
        return;
    }
    let source = match state.rejections.judge(peer, Instant::now()) {
        Verdict::Record(source) => source,
        Verdict::Count(source) => {
            tracing::debug!(reason = %error, "Delivery rejected (source over its budget)");
            state.metrics.rejections_summarized.inc();
            if !state.store.count_rejection(source) {
                state.metrics.rejections_not_recorded.inc();
            }
            return;
        }
    };
    tracing::warn!(reason = %error, "Delivery rejected");
    // Deliveries for unknown projects are not kept: anyone can send those.
    if matches!(error, IntakeError::UnknownProject(_)) {
        return;
    }
    let rejection = Rejection {
        source: Some(source),
        project: project.to_owned(),
        forge: seen.forge.map(|f| f.kind().as_str()),
        delivery_id: seen.delivery.as_ref().map(|d| d.id.to_string()),
        event: seen
            .delivery
            .as_ref()
            .map(|d| d.event.chars().take(64).collect()),
        reason: super::error::one_line(&error.to_string())
            .chars()
            .take(300)
            .collect(),
        received_at,
    };
    if !state.store.record_rejection(rejection) {
        state.metrics.rejections_not_recorded.inc();
    }
}

#[derive(Serialize)]
struct Answer {
    #[serde(skip)]
    code: u16,
    delivery: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Answer {
    fn into_response(self) -> HttpResponse {
        let code = actix_web::http::StatusCode::from_u16(self.code)
            .unwrap_or(actix_web::http::StatusCode::OK);
        HttpResponse::build(code).json(self)
    }
}

async fn accept(
    request: &HttpRequest,
    project_name: &str,
    payload: web::Payload,
    state: &IntakeState,
    received_at: OffsetDateTime,
    seen: &mut Seen,
) -> Result<Answer, IntakeError> {
    let span = tracing::Span::current();
    let project = state
        .settings
        .project(project_name)
        .ok_or_else(|| IntakeError::UnknownProject(project_name.chars().take(64).collect()))?;
    let headers = Headers(request.headers());
    let forge = forge::detect(&headers).ok_or(IntakeError::UnknownForge)?;
    seen.forge = Some(forge);
    span.record("forge", forge.kind().as_str());
    if forge.kind() != project.forge {
        return Err(IntakeError::ForgeMismatch {
            project: project.name.to_string(),
            got: forge.kind(),
            expected: project.forge,
        });
    }
    let delivery = forge.identify(&headers)?;
    span.record("delivery_id", delivery.id.as_ref());
    span.record("event", delivery.event.as_str());
    let delivery = seen.delivery.insert(delivery);

    let encoding = forge.encoding(&content_type(&headers)?)?;
    let (body, _room) = {
        let _reading = state.metrics.bodies_reading.guard();
        read_body(request, payload, &state.settings.server, &state.bodies).await?
    };
    forge.verify(
        &headers,
        &body,
        &project.secrets,
        VerifyContext {
            now: SystemTime::now(),
            tolerance: state.settings.server.signature_tolerance,
        },
    )?;
    let hook = forge.parse(&delivery.event, encoding, &body)?;
    if let Some(repository) = hook.repository() {
        span.record("repo", repository);
        if !project.repository.matches(repository) {
            return Err(IntakeError::WrongRepository {
                got: repository.chars().take(255).collect(),
            });
        }
    }
    let record = to_record(
        state.settings.report.base_url.as_deref(),
        project,
        forge,
        delivery,
        hook,
        body,
        received_at,
    );
    if let Some(git_ref) = &record.git_ref {
        span.record("git_ref", git_ref.as_str());
    }
    if let Some(sha) = &record.sha {
        span.record("sha", sha.as_str());
    }
    commit(state, record, &delivery.id).await
}

/// Records the delivery (one fsynced commit) and only then answers; a queued job wakes the
/// worker and the report sender.
async fn commit(
    state: &IntakeState,
    record: NewDelivery,
    id: &DeliveryId,
) -> Result<Answer, IntakeError> {
    let note = match &record.action {
        Action::Record {
            outcome: "ignored",
            reason,
        }
        | Action::Cancel { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    let waits = matches!(&record.action, Action::Queue(job) if job.waits_for_approval);
    let recorded = state
        .store
        .record(record)
        .await
        .map_err(IntakeError::Store)?;
    if matches!(recorded, Recorded::Queued { .. }) {
        state.wake.notify_one();
        state.reports.notify_one();
    }
    if let Recorded::Canceled { queued, .. } = &recorded {
        report_canceled(state, queued.clone()).await;
    }
    let mut answer = answer(id, recorded);
    if matches!(answer.status, "ignored" | "canceled") {
        answer.reason = note;
    }
    if waits && answer.status == "queued" {
        answer.status = "waiting";
        answer.reason =
            Some("a pull request from a fork: it runs once an operator approves it".into());
    }
    Ok(answer)
}

/// The commit statuses of queued jobs a closed pull request canceled: nobody else ends them.
/// After the commit, as an operator's cancel does; a crash in between leaves their `pending`.
async fn report_canceled(state: &IntakeState, queued: Vec<i64>) {
    if queued.is_empty() {
        return;
    }
    let (settings, jobs) = (state.settings.clone(), state.jobs.clone());
    let reported = tokio::task::spawn_blocking(move || {
        queued
            .into_iter()
            .try_for_each(|job| crate::worker::report_canceled(&settings, &jobs, job))
    })
    .await;
    match reported {
        Ok(Ok(())) => state.reports.notify_one(),
        Ok(Err(e)) => tracing::error!(error = %e, "Could not report the canceled jobs' end"),
        Err(e) => tracing::error!(error = %e, "Could not report the canceled jobs' end"),
    }
}

fn answer(id: &DeliveryId, recorded: Recorded) -> Answer {
    let delivery = id.to_string();
    match recorded {
        Recorded::Queued { job } => Answer {
            code: 202,
            delivery,
            status: "queued",
            job: Some(job),
            reason: None,
        },
        Recorded::Recorded { outcome } => Answer {
            code: 200,
            delivery,
            status: if outcome == "pong" { "pong" } else { "ignored" },
            job: None,
            reason: None,
        },
        Recorded::Duplicate { job, .. } => Answer {
            code: 200,
            delivery,
            status: "duplicate",
            job,
            reason: Some("this delivery id was already recorded".into()),
        },
        Recorded::Canceled { queued, running } => Answer {
            code: 200,
            delivery,
            status: "canceled",
            job: queued.iter().chain(&running).max().copied(),
            reason: None,
        },
        Recorded::AlreadyRecovered { job } => Answer {
            code: 200,
            delivery,
            status: "duplicate",
            job: Some(job),
            reason: Some(format!(
                "this push was recovered while its delivery was missing (job {job})"
            )),
        },
    }
}

/// The media type without parameters (`application/json; charset=utf-8` → `application/json`).
fn content_type(headers: &Headers<'_>) -> Result<String, IntakeError> {
    let value = headers
        .0
        .get(CONTENT_TYPE)
        .ok_or(IntakeError::MissingContentType)?
        .to_str()
        .map_err(|_| HookError::BadHeader {
            header: "Content-Type",
            reason: "not visible ASCII".into(),
        })?;
    let essence = value.split(';').next().unwrap_or("").trim();
    Ok(essence.to_ascii_lowercase().chars().take(100).collect())
}

/// Reads the whole body, refusing it as soon as it passes `max_body_bytes` (or at once, when
/// Content-Length already says so), within the memory budget shared by all requests, which is
/// taken as bytes arrive. A body whose bytes stop coming for `body_idle_timeout`, or that is
/// not whole by `body_deadline`, is dropped (and its room given back). The reservation is held
/// until the delivery is answered.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    server: &ServerSettings,
    budget: &BodyBudget,
) -> Result<(Bytes, Reservation), IntakeError> {
    let limit = server.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(IntakeError::TooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + server.body_deadline;
    let mut room = Reservation::default();
    // Capacity follows what arrived, not what was declared: a declared length costs nothing.
    let mut body = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut payload, server, deadline).await? {
        if body.len() + chunk.len() > limit {
            return Err(IntakeError::TooLarge { limit });
        }
        budget.hold(&mut room, body.len() + chunk.len()).await?;
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), room))
}

/// The next piece of the body, or None at its end; an error when it does not come in time.
async fn next_chunk(
    payload: &mut web::Payload,
    server: &ServerSettings,
    deadline: tokio::time::Instant,
) -> Result<Option<Bytes>, IntakeError> {
    let next = tokio::time::timeout(server.body_idle_timeout, payload.next());
    match tokio::time::timeout_at(deadline, next).await {
        Err(_) => Err(IntakeError::BodyTooSlow {
            secs: server.body_deadline.as_secs(),
        }),
        Ok(Err(_)) => Err(IntakeError::BodyStalled {
            secs: server.body_idle_timeout.as_secs(),
        }),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(chunk))) => chunk
            .map(Some)
            .map_err(|e| IntakeError::BodyRead(e.to_string())),
    }
}

/// The first status of a push, committed with its job, when the project reports statuses:
/// the push is accepted and queued. Its link names the job the store is about to number.
fn queued_status(
    base_url: Option<&str>,
    project: &Project,
    push: &crate::forge::Push,
    waits_for_approval: bool,
) -> Option<NewReport> {
    project.statuses.as_ref()?;
    let status = crate::report::text::StatusFor {
        repository: push.repository.as_ref(),
        sha: push.sha.as_ref(),
        git_ref: push.git_ref.as_ref(),
        base_url,
        job: 0,
    };
    let label = push.git_ref.label();
    let words = if waits_for_approval {
        format!("Waiting for approval: {label} comes from a fork")
    } else {
        format!("Queued: {label} accepted, waiting for a worker")
    };
    let mut report = status.status(
        crate::report::text::CONTEXT.to_owned(),
        crate::report::StatusState::Pending,
        &words,
    );
    if let crate::report::Report::Status {
        target_url: Some(url),
        ..
    } = &mut report
    {
        *url = url.replace("/jobs/0", "/jobs/{job}");
    }
    Some(report.queued(project.name.as_ref(), "forge".into(), None))
}

/// Makes `record` queue a job for `push` (a pull request's head, when `pull` says which, and
/// whether it waits for approval), with its neutral event and its first status.
fn queue(
    record: &mut NewDelivery,
    base_url: Option<&str>,
    project: &Project,
    id: &DeliveryId,
    push: forge::Push,
    pull: Option<(PullSummary, bool)>,
) {
    let (pull, waits_for_approval) = match pull {
        Some((summary, waits)) => (Some(summary), waits),
        None => (None, false),
    };
    let mut event = super::PushEvent::new(
        project.forge,
        &project.name,
        push.clone(),
        id.clone(),
        record.received_at,
    );
    let new_pull = pull.as_ref().map(|p| PullInfo {
        number: i64::try_from(p.number).unwrap_or(i64::MAX),
        title: p.title.clone(),
        author: p.author.clone(),
        source_branch: p.source_branch.clone(),
        target_branch: p.target_branch.clone(),
        from_fork: p.from_fork,
    });
    event.pull = pull;
    record.event_json = serde_json::to_string(&event).ok();
    record.git_ref = Some(push.git_ref.to_string());
    record.sha = Some(push.sha.to_string());
    record
        .reports
        .extend(queued_status(base_url, project, &push, waits_for_approval));
    record.action = Action::Queue(NewJob {
        git_ref: push.git_ref.to_string(),
        ref_kind: push.git_ref.kind(),
        ref_name: push.git_ref.name().to_owned(),
        sha: push.sha.to_string(),
        pull: new_pull,
        waits_for_approval,
    });
}

/// A push that recovery found with no recorded delivery, as a delivery of its own: its id
/// names the ref and sha (so finding it twice records it once), its origin says it was
/// recovered, and its body is the push event deploybot made (there is no forge's body).
pub(crate) fn recovered_push(
    base_url: Option<&str>,
    project: &Project,
    push: forge::Push,
    received_at: OffsetDateTime,
) -> NewDelivery {
    let id = DeliveryId::recovered(&push.git_ref, &push.sha);
    let mut record = NewDelivery {
        delivery_id: id.to_string(),
        project: project.name.to_string(),
        forge: project.forge.as_str(),
        event: "push".into(),
        repository: Some(project.repository.to_string()),
        git_ref: None,
        sha: None,
        headers_json: "{}".into(),
        event_json: None,
        body: Bytes::new(),
        received_at,
        action: Action::Record {
            outcome: "ignored",
            reason: String::new(),
        },
        reports: Vec::new(),
        origin: Origin::Recovered,
    };
    queue(&mut record, base_url, project, &id, push, None);
    record.body = Bytes::from(record.event_json.clone().unwrap_or_default());
    record
}

/// The store record for a verified delivery, with the neutral event for a push.
fn to_record(
    base_url: Option<&str>,
    project: &Project,
    forge: &dyn Forge,
    delivery: &DeliveryHeaders,
    hook: Hook,
    body: Bytes,
    received_at: OffsetDateTime,
) -> NewDelivery {
    let headers_json = serde_json::to_string(
        &delivery
            .recorded
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap_or_else(|_| "{}".into());
    let repository = hook.repository().map(str::to_owned);
    let git_ref = hook.git_ref();
    let mut record = NewDelivery {
        delivery_id: delivery.id.to_string(),
        project: project.name.to_string(),
        forge: forge.kind().as_str(),
        event: delivery.event.clone(),
        repository,
        git_ref,
        sha: None,
        headers_json,
        event_json: None,
        body,
        received_at,
        action: Action::Record {
            outcome: "pong",
            reason: String::new(),
        },
        reports: Vec::new(),
        origin: Origin::Webhook,
    };
    match hook {
        Hook::Push(push) => queue(&mut record, base_url, project, &delivery.id, push, None),
        Hook::Ping { .. } => {
            record.action = Action::Record {
                outcome: "pong",
                reason: "ping".into(),
            }
        }
        Hook::Ignored { reason, .. } => {
            record.action = Action::Record {
                outcome: "ignored",
                reason,
            }
        }
        Hook::PullRequest(pull) => {
            record.git_ref = Some(pull.head_ref(project.forge));
            record.sha = Some(pull.head_sha.to_string());
            match super::pull::decide(project, pull) {
                PullOutcome::Build(build) => {
                    let PullBuild {
                        push,
                        summary,
                        waits_for_approval,
                    } = *build;
                    let pull = Some((summary, waits_for_approval));
                    queue(&mut record, base_url, project, &delivery.id, push, pull);
                }
                PullOutcome::Cancel {
                    git_ref,
                    reason,
                    error,
                } => {
                    record.action = Action::Cancel {
                        git_ref: git_ref.to_string(),
                        reason,
                        error,
                    }
                }
                PullOutcome::Ignore(reason) => {
                    record.action = Action::Record {
                        outcome: "ignored",
                        reason,
                    }
                }
            }
        }
    }
    record
}
