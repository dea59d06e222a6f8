//! Rolling images out to Kubernetes: the only code that talks to a cluster.
//!
//! The worker (and `deploybot rollback`) hand a [`Request`] to the [`Deployer`], which records
//! each step in the store and drives the rollout on a [`Cluster`]: `kube.rs` implements that
//! on the Kubernetes API with kube-rs. `health.rs` says when a rollout is done, as `kubectl
//! rollout status` does; `order.rs` says which of two tags is the newer.

mod cluster;
mod health;
mod kube;
mod order;
mod rollout;

pub use cluster::{Cluster, ClusterError, DeploymentRef, ImageChange, Observed};
pub use health::{assess, Health};
pub use kube::KubeCluster;
pub use rollout::{Deployer, Note, Outcome, Request};
