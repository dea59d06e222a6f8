//! HTTP intake: the webhook route and the forge-neutral event it produces.
//!
//! Intake owns the edge: it turns an untrusted request into either a refusal (a 4xx with a
//! one-line reason) or a durable record. It knows no forge's JSON (that is `forge/*`) and
//! makes no network calls; it answers only after the store has committed.

mod budget;
mod error;
mod event;
mod pull;
mod rejections;
mod webhook;

pub use budget::BodyBudget;
pub use error::IntakeError;
pub use event::PushEvent;
pub use rejections::RejectionBudget;
pub(crate) use webhook::recovered_push;
pub use webhook::{receive, IntakeState};
