//! Server-rendered pages: small, fast, no front-end build. The handlers here read the store
//! and answer; what a page looks like is in `templates/`, which escapes every value.

use std::fmt::Write;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use maud::Markup;

use super::api::{JobsQuery, LogsQuery, Views};
use super::templates;
use crate::domain::JobState;
use crate::store::LogChunk;

const HTML: &str = "text/html; charset=utf-8";

/// A 200 with `body` in the pages' frame.
fn page(title: &str, body: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(HTML)
        .body(templates::layout(title, body).into_string())
}

/// `/`: recent jobs, filterable by project and state.
pub async fn index(views: web::Data<Arc<Views>>, query: web::Query<JobsQuery>) -> HttpResponse {
    let filters = match query.into_inner().filters(true) {
        Ok(filters) => filters,
        Err(reason) => return super::api::error(400, &reason),
    };
    let read = views
        .read(move |v| {
            v.jobs.list_filtered(
                filters.limit,
                filters.project.as_deref(),
                filters.state,
                filters.kind,
            )
        })
        .await;
    match read {
        Ok(jobs) => page("Jobs", templates::jobs(&jobs, JobState::ALL)),
        Err(response) => response,
    }
}

/// `/jobs/{id}`: the job's stages by service, its images and its rollouts.
pub async fn job(views: web::Data<Arc<Views>>, id: web::Path<i64>) -> HttpResponse {
    let id = id.into_inner();
    match views.read(move |v| v.jobs.get(id)).await {
        Ok(Some(detail)) => page(&format!("Job {id}"), templates::job(&detail)),
        Ok(None) => HttpResponse::NotFound()
            .content_type(HTML)
            .body(templates::no_such_job(id).into_string()),
        Err(response) => response,
    }
}

/// `/deliveries`: the recorded webhook deliveries and what became of each (queued, ignored
/// with why, rejected with why), so a person can see why a push did nothing.
pub async fn deliveries(views: web::Data<Arc<Views>>) -> HttpResponse {
    let read = views
        .read(|v| {
            v.reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries(200)
        })
        .await;
    match read {
        Ok(rows) => page("Deliveries", templates::deliveries(&rows)),
        Err(response) => response,
    }
}

/// `/jobs/{id}/log`: one service's log (or all), following live while the job runs.
pub async fn log(
    views: web::Data<Arc<Views>>,
    id: web::Path<i64>,
    query: web::Query<LogsQuery>,
) -> HttpResponse {
    let id = id.into_inner();
    let service = query.into_inner().service;
    let filter = service.clone();
    let chunks = match views
        .read(move |v| v.jobs.logs(id, filter.as_deref(), 0))
        .await
    {
        Ok(chunks) => chunks,
        Err(response) => return response,
    };
    let after = chunks.last().map_or(0, |c| c.id);
    let body = templates::log(id, service.as_deref(), &log_text(&chunks), after);
    page(&format!("Job {id} log"), body)
}

/// The log as the page shows it: each line after its service and stage, as the stream sends it.
fn log_text(chunks: &[LogChunk]) -> String {
    let mut text = String::new();
    for chunk in chunks {
        for line in chunk.text.lines() {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{} {}| {line}", chunk.service, chunk.stage);
        }
    }
    text
}
