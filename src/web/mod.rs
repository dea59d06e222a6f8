//! The web surface: operations endpoints (liveness, readiness, metrics), the JSON API under
//! `/api/v1/` and server-rendered pages. Everything here reads the store; nothing here builds.

mod actions;
pub mod api;
mod health;
mod pages;
mod templates;

pub use actions::{ActionToken, Rollbacks};
pub use api::Views;
pub use health::{healthz, metrics, readyz};

use actix_web::web;

/// One path, one method; any other method on it gets 405.
macro_rules! only {
    ($path:expr, $method:ident, $allow:literal, $handler:expr) => {
        web::resource($path)
            .route(web::$method().to($handler))
            .default_service(web::to(|| async { method_not_allowed($allow) }))
    };
}

/// The pages, the JSON API and live logs. A known path asked with another method gets 405;
/// a query or path that does not parse gets a one-line JSON 400.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| bad_request("query", &e.to_string())),
        )
        .app_data(
            web::PathConfig::default().error_handler(|e, _| bad_request("path", &e.to_string())),
        )
        .app_data(
            web::FormConfig::default()
                .limit(4096)
                .error_handler(|e, _| bad_request("form", &e.to_string())),
        )
        .service(only!("/", get, "GET", pages::index))
        .service(only!("/jobs/{id}", get, "GET", pages::job))
        .service(only!("/jobs/{id}/log", get, "GET", pages::log))
        .service(only!(
            "/jobs/{id}/approve",
            post,
            "POST",
            actions::approve_from_page
        ))
        .service(only!("/deliveries", get, "GET", pages::deliveries))
        .service(only!("/api/v1/jobs", get, "GET", api::jobs))
        .service(only!("/api/v1/jobs/{id}", get, "GET", api::job))
        .service(only!("/api/v1/jobs/{id}/logs", get, "GET", api::logs))
        .service(only!(
            "/api/v1/jobs/{id}/logs/stream",
            get,
            "GET",
            api::log_stream
        ))
        .service(only!("/api/v1/deliveries", get, "GET", api::deliveries))
        .service(only!(
            "/api/v1/jobs/{id}/rerun",
            post,
            "POST",
            actions::rerun
        ))
        .service(only!(
            "/api/v1/jobs/{id}/cancel",
            post,
            "POST",
            actions::cancel
        ))
        .service(only!(
            "/api/v1/jobs/{id}/approve",
            post,
            "POST",
            actions::approve
        ))
        .service(only!("/api/v1/rollback", post, "POST", actions::rollback));
}

fn method_not_allowed(allow: &'static str) -> actix_web::HttpResponse {
    let mut response = api::error(
        405,
        &format!("method not allowed on this path (allowed: {allow})"),
    );
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    response
}

fn bad_request(part: &str, reason: &str) -> actix_web::Error {
    let response = api::error(400, &format!("{part}: {}", reason.replace('\n', " ")));
    actix_web::error::InternalError::from_response(reason.to_owned(), response).into()
}
