//! Operations endpoints: liveness, readiness and metrics. (The operator pages and the JSON
//! API will live here too.)

mod health;

pub use health::{healthz, metrics, readyz};
