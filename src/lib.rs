//! deploybot: turns a signed `git push` or tag into built images, rolled-out Deployments and
//! status reports. See ARCHITECTURE.md for the map; this crate root only lists the modules.

pub(crate) mod checkout;
pub mod cli;
pub mod config;
pub(crate) mod deploy;
pub mod docker;
pub mod domain;
pub mod forge;
pub(crate) mod intake;
pub(crate) mod keyed_lock;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub mod report;
pub(crate) mod retention;
pub mod startup;
pub mod store;
pub(crate) mod telemetry;
pub(crate) mod web;
pub(crate) mod worker;
