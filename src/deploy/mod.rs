//! Rolling images out to Kubernetes: the only code that talks to a cluster.
//!
//! The worker (and `deploybot rollback`) hand a [`Request`] to the [`Deployer`], which records
//! each step in the store and drives the rollout on a [`Cluster`]: `kube.rs` implements that
//! on the Kubernetes API with kube-rs. `health.rs` says when a rollout is done, as `kubectl
//! rollout status` does; `order.rs` says which of two tags is the newer; `image.rs` which part of a pinned image
//! reference names its content.

mod by_hand;
mod cluster;
mod health;
pub(crate) mod image;
mod kube;
mod order;
mod rollout;

pub use by_hand::{roll_back, RollbackAsk, RollbackError};
pub use cluster::Cluster;
#[cfg(test)]
pub(crate) use cluster::{Changes, ClusterError, DeploymentRef, ImageChange, Observed};
pub(crate) use kube::client_config;
pub use kube::KubeCluster;
pub(crate) use rollout::Request;
pub use rollout::{Deployer, Note, Outcome};

use std::collections::HashMap;
use std::sync::Arc;

/// A deployer for every configured environment, on the Kubernetes API.
pub async fn connect(
    settings: &crate::config::Settings,
    jobs: Arc<crate::store::Jobs>,
) -> Deployer<KubeCluster> {
    let mut clusters = HashMap::new();
    for environment in &settings.environments {
        let cluster = KubeCluster::connect(&environment.cluster).await;
        if let Err(e) = &cluster {
            tracing::error!(environment = %environment.name, error = %e, "This environment's cluster cannot be used; its deploys fail until deploybot restarts");
        }
        clusters.insert(environment.name.clone(), cluster);
    }
    Deployer::new(clusters, jobs)
}
