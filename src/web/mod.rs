//! The web surface: operations endpoints (liveness, readiness, metrics), the JSON API under
//! `/api/v1/` and server-rendered pages. Everything here reads the store; nothing here builds.

mod actions;
pub mod api;
mod health;
mod pages;

pub use actions::ActionToken;
pub use api::Views;
pub use health::{healthz, metrics, readyz};

use actix_web::web;

/// The read-only routes: pages, JSON API and live logs.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(pages::index))
        .route("/jobs/{id}", web::get().to(pages::job))
        .route("/jobs/{id}/log", web::get().to(pages::log))
        .route("/api/v1/jobs", web::get().to(api::jobs))
        .route("/api/v1/jobs/{id}", web::get().to(api::job))
        .route("/api/v1/jobs/{id}/logs", web::get().to(api::logs))
        .route(
            "/api/v1/jobs/{id}/logs/stream",
            web::get().to(api::log_stream),
        )
        .route("/api/v1/deliveries", web::get().to(api::deliveries))
        .route("/api/v1/jobs/{id}/rerun", web::post().to(actions::rerun))
        .route("/api/v1/jobs/{id}/cancel", web::post().to(actions::cancel));
}
