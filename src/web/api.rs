//! `/api/v1/`: the same data as the pages, as JSON (documented in `openapi.yaml`).

use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::domain::{JobState, RefKind};
use crate::store::{Jobs, Reader, StoreError};

/// Read access to the store for the web surface.
pub struct Views {
    pub jobs: Arc<Jobs>,
    pub reader: Mutex<Reader>,
    /// Counts live-log streams (`deploybot_log_followers`).
    pub followers: crate::metrics::Gauge,
}

impl Views {
    /// Runs a store read off the async threads; errors become an opaque 500 (cause logged).
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Views) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, HttpResponse> {
        let views = self.clone();
        match tokio::task::spawn_blocking(move || f(&views)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Store read failed");
                Err(error(500, "the store could not be read"))
            }
            Err(e) => {
                tracing::error!(error = %e, "Store read panicked");
                Err(error(500, "the store could not be read"))
            }
        }
    }
}

pub fn error(status: u16, reason: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(serde_json::json!({ "error": reason }))
}

#[derive(Deserialize)]
pub struct JobsQuery {
    pub project: Option<String>,
    pub state: Option<String>,
    /// `branch`, `tag` or `pull`.
    pub kind: Option<String>,
    pub limit: Option<u32>,
}

/// The filters of a jobs list, parsed.
pub struct JobFilters {
    pub project: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<RefKind>,
    pub limit: u32,
}

/// The kinds of ref a jobs list filters by.
pub const REF_KINDS: [RefKind; 3] = [RefKind::Branch, RefKind::Tag, RefKind::Pull];

impl JobsQuery {
    /// The filters, with empty values (an HTML form's "any", when `form`) meaning no filter.
    /// A state filter must name a state; anything else is a 400, not an empty list.
    pub fn filters(self, form: bool) -> Result<JobFilters, String> {
        let keep = |v: Option<String>| v.filter(|v| !(form && v.is_empty()));
        let state = keep(self.state)
            .map(|text| one_of("state", &text, JobState::ALL, |s| s.as_str()))
            .transpose()?;
        let kind = keep(self.kind)
            .map(|text| one_of("kind", &text, &REF_KINDS, |k| k.as_str()))
            .transpose()?;
        Ok(JobFilters {
            project: self.project.filter(|v| !v.is_empty()),
            state,
            kind,
            limit: self.limit.unwrap_or(50).min(500),
        })
    }
}

/// The value of `known` whose text `text` is, or the 400's reason naming the query `key`.
fn one_of<T: Copy>(
    key: &str,
    text: &str,
    known: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, String> {
    known
        .iter()
        .copied()
        .find(|value| as_str(*value) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = known.iter().map(|v| as_str(*v)).collect();
            format!(
                "query {key}: unknown {key} \"{}\" (expected one of {})",
                text.chars().take(40).collect::<String>(),
                names.join(", ")
            )
        })
}

pub async fn jobs(views: web::Data<Arc<Views>>, query: web::Query<JobsQuery>) -> HttpResponse {
    let filters = match query.into_inner().filters(false) {
        Ok(filters) => filters,
        Err(reason) => return error(400, &reason),
    };
    match views
        .read(move |v| {
            v.jobs.list_filtered(
                filters.limit,
                filters.project.as_deref(),
                filters.state,
                filters.kind,
            )
        })
        .await
    {
        Ok(jobs) => HttpResponse::Ok().json(serde_json::json!({ "jobs": jobs })),
        Err(response) => response,
    }
}

pub async fn job(views: web::Data<Arc<Views>>, id: web::Path<i64>) -> HttpResponse {
    let id = id.into_inner();
    match views.read(move |v| v.jobs.get(id)).await {
        Ok(Some(detail)) => HttpResponse::Ok().json(detail),
        Ok(None) => error(404, &format!("job {id}: no such job")),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub struct LogsQuery {
    pub service: Option<String>,
    /// Return chunks after this one (the `next` of an earlier answer).
    pub after: Option<i64>,
}

pub async fn logs(
    views: web::Data<Arc<Views>>,
    id: web::Path<i64>,
    query: web::Query<LogsQuery>,
) -> HttpResponse {
    let id = id.into_inner();
    let LogsQuery { service, after } = query.into_inner();
    let after = after.unwrap_or(0);
    let read = views
        .read(move |v| {
            let state = v.jobs.state(id)?;
            Ok(state.map(|s| (s, v.jobs.logs(id, service.as_deref(), after))))
        })
        .await;
    match read {
        Ok(Some((state, Ok(chunks)))) => {
            let next = chunks.last().map_or(after, |c| c.id);
            HttpResponse::Ok().json(serde_json::json!({
                "job": id, "state": state, "chunks": chunks, "next": next,
            }))
        }
        Ok(Some((_, Err(e)))) => {
            tracing::error!(error = %e, "Log read failed");
            error(500, "the store could not be read")
        }
        Ok(None) => error(404, &format!("job {id}: no such job")),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    pub limit: Option<u32>,
}

pub async fn deliveries(
    views: web::Data<Arc<Views>>,
    query: web::Query<DeliveriesQuery>,
) -> HttpResponse {
    let limit = query.limit.unwrap_or(50).min(500);
    let read = views
        .read(move |v| {
            v.reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries(limit)
        })
        .await;
    match read {
        Ok(rows) => HttpResponse::Ok().json(serde_json::json!({ "deliveries": rows })),
        Err(response) => response,
    }
}

/// Server-Sent Events: a job's log as it is written, until the job ends. Each event's id is
/// the chunk id, so a client that reconnects with `Last-Event-ID` resumes where it was.
pub async fn log_stream(
    views: web::Data<Arc<Views>>,
    id: web::Path<i64>,
    request: actix_web::HttpRequest,
) -> HttpResponse {
    let id = id.into_inner();
    let after: i64 = request
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let views = views.get_ref().clone();
    if let Ok(None) = views.read(move |v| v.jobs.state(id)).await {
        return error(404, &format!("job {id}: no such job"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // On this worker's own thread: the follower lives as long as the response it feeds.
    actix_web::rt::spawn(follow(views, id, after, tx));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(tokio_stream_from(rx))
}

/// How often a follower looks for new chunks.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(300);

type Events = tokio::sync::mpsc::Sender<Result<web::Bytes, actix_web::Error>>;

/// Feeds a job's new log chunks to `events` until the job ends or the client goes away. A
/// client that disconnects ends it at once, not at the next chunk (a queued job may write
/// none for hours): every wait is raced against the response being dropped.
async fn follow(views: Arc<Views>, id: i64, mut after: i64, events: Events) {
    let _following = views.followers.guard();
    loop {
        let poll = views.read(move |v| Ok((v.jobs.state(id)?, v.jobs.logs(id, None, after)?)));
        let read = tokio::select! {
            _ = events.closed() => return,
            read = poll => read,
        };
        let Ok((state, chunks)) = read else { return };
        for chunk in chunks {
            after = chunk.id;
            if events.send(Ok(log_event(&chunk))).await.is_err() {
                return; // the client went away
            }
        }
        // A job that is over (or gone) ends the stream, saying how it ended.
        if !state.is_some_and(JobState::is_active) {
            let over = state.map_or("", JobState::as_str);
            let end = format!("event: end\ndata: {over}\n\n");
            let _ = events.send(Ok(web::Bytes::from(end))).await;
            return;
        }
        tokio::select! {
            _ = events.closed() => return,
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// One chunk as a Server-Sent Event, its id the chunk's.
fn log_event(chunk: &crate::store::LogChunk) -> web::Bytes {
    let mut event = format!("id: {}\nevent: log\n", chunk.id);
    for line in chunk.text.lines() {
        event.push_str(&format!(
            "data: {} {}| {line}\n",
            chunk.service, chunk.stage
        ));
    }
    event.push('\n');
    web::Bytes::from(event)
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
