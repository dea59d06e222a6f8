//! deploybot: turns a signed `git push` or tag into built images, rolled-out Deployments and
//! status reports. See ARCHITECTURE.md for the map; this crate root only lists the modules.

pub(crate) mod checkout;
pub mod cli;
pub mod config;
pub(crate) mod deploy;
pub mod domain;
pub mod executor;
pub mod forge;
#[cfg(test)]
mod fuzz;
pub(crate) mod intake;
pub(crate) mod keyed_lock;
pub(crate) mod masking;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub(crate) mod recovery;
pub(crate) mod registry;
pub mod report;
pub(crate) mod retention;
pub mod startup;
pub mod store;
pub(crate) mod telemetry;
pub(crate) mod web;
pub(crate) mod worker;

/// For the integration tests only (`tests/suite/registry.rs`): the registry client, which
/// the rest of deploybot reaches as `crate::registry`. Not an API for other crates.
#[doc(hidden)]
pub mod test_hooks {
    pub use crate::registry::{RegistryClient, RegistryError, Step, Target};
}
