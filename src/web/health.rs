use std::time::Duration;

use actix_web::{web, HttpResponse};

use crate::intake::IntakeState;

/// Liveness: the process answers HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store's writer is alive and the database takes a write transaction, so a
/// delivery sent now would be recorded.
pub async fn readyz(state: web::Data<IntakeState>) -> HttpResponse {
    match tokio::time::timeout(Duration::from_secs(2), state.store.probe()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Readiness probe failed");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "unavailable", "error": "store is not writable" }))
        }
        Err(_) => HttpResponse::ServiceUnavailable().json(
            serde_json::json!({ "status": "unavailable", "error": "store did not answer within 2 s" }),
        ),
    }
}

/// Prometheus text exposition.
pub async fn metrics(
    state: web::Data<IntakeState>,
    views: web::Data<std::sync::Arc<super::Views>>,
) -> HttpResponse {
    // Job counts come from the store, so they are right whichever process changed them.
    if let Ok(counts) = views.read(|v| v.jobs.counts()).await {
        state.metrics.jobs.reset();
        for (job_state, count) in counts {
            state
                .metrics
                .jobs
                .with_label_values(&[job_state.as_str()])
                .set(count);
        }
        for job_state in crate::domain::JobState::ALL {
            state.metrics.jobs.with_label_values(&[job_state.as_str()]);
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
