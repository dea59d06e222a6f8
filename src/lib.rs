//! deploybot: turns a signed `git push` or tag into built images, rolled-out Deployments and
//! status reports. See ARCHITECTURE.md for the map; this crate root only lists the modules.

pub mod checkout;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod docker;
pub mod domain;
pub mod forge;
pub mod intake;
pub mod keyed_lock;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod retention;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod worker;
