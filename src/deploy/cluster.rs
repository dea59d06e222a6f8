//! What the rollout logic needs from a cluster, and nothing more: read a Deployment, set one
//! container's image or only its own annotations (optimistically, against the version read),
//! follow its changes, and say why the pods of a failed rollout were not ready.
//! `kube.rs` implements it with kube-rs; a fake or another orchestrator would be one more file.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;

/// The parts of a Deployment that decide what runs and whether its rollout is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub resource_version: String,
    pub generation: i64,
    pub observed_generation: i64,
    /// `spec.replicas` (the API server defaults it to 1).
    pub desired: i32,
    /// `status.replicas`: every pod of every ReplicaSet, old ones included.
    pub total: i32,
    pub updated: i32,
    pub available: i32,
    pub progressing: Option<Condition>,
    /// Container name → image, in `spec.template`.
    pub images: BTreeMap<String, String>,
    /// `spec.selector.matchLabels`: which pods are this Deployment's.
    pub selector: BTreeMap<String, String>,
}

/// The Deployment's `Progressing` condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub status: String,
    pub reason: String,
    pub message: String,
    /// `lastUpdateTime`: tells a fresh verdict from one left over from an earlier rollout.
    pub last_update: String,
}

/// Where a Deployment lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeploymentRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for DeploymentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deployment {}/{}", self.namespace, self.name)
    }
}

/// One image change: the container, its new image, and the annotations that say why.
#[derive(Debug, Clone)]
pub struct ImageChange<'a> {
    pub container: &'a str,
    pub image: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    /// The version this change was decided on; a newer one on the server is a conflict.
    pub resource_version: &'a str,
}

/// Each error names what was asked and of what, so the job and the person reading it know
/// which permission, object or server is the problem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The Role lacks the verb, or lists `resourceNames` without this Deployment.
    #[error("forbidden: cannot {verb} deployment \"{name}\" in namespace \"{namespace}\" (give the deploybot Role there the verb `{verb}` on deployments.apps, and \"{name}\" in its resourceNames if it lists any): {message}")]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(DeploymentRef),
    #[error("{0} changed while it was being updated (409 conflict)")]
    Conflict(DeploymentRef),
    #[error("the Kubernetes API server is unreachable ({verb} {target}): {message}")]
    Unreachable {
        verb: &'static str,
        target: DeploymentRef,
        message: String,
    },
    #[error("{verb} {target} failed: {message}")]
    Other {
        verb: &'static str,
        target: DeploymentRef,
        message: String,
    },
}

pub type Changes = Pin<Box<dyn Stream<Item = Result<Observed, ClusterError>> + Send>>;

pub trait Cluster: Send + Sync + 'static {
    fn read(
        &self,
        target: &DeploymentRef,
    ) -> impl Future<Output = Result<Observed, ClusterError>> + Send;

    /// Sets one container's image; returns the Deployment as the server stored it.
    fn set_image(
        &self,
        target: &DeploymentRef,
        change: ImageChange<'_>,
    ) -> impl Future<Output = Result<Observed, ClusterError>> + Send;

    /// Sets `annotations` on the Deployment's own metadata, against `resource_version` (a newer
    /// one on the server is a conflict), and nothing else: its pod template stays as it is, so
    /// no new ReplicaSet is made and no pod restarts. Returns the Deployment as stored.
    fn annotate(
        &self,
        target: &DeploymentRef,
        annotations: &BTreeMap<String, String>,
        resource_version: &str,
    ) -> impl Future<Output = Result<Observed, ClusterError>> + Send;

    /// The Deployment after each change since `resource_version`; the stream may end (a
    /// server-side watch timeout), and the caller reads again and follows again.
    fn follow(
        &self,
        target: &DeploymentRef,
        resource_version: &str,
    ) -> impl Future<Output = Result<Changes, ClusterError>> + Send;

    /// Why the pods running `image` in `container` (those `selector` matches) are not ready,
    /// one line per pod, for the person reading a failed rollout: waiting to be scheduled, an
    /// image that cannot be pulled, a crash loop, a readiness probe that does not pass.
    fn pods_not_ready(
        &self,
        target: &DeploymentRef,
        selector: &BTreeMap<String, String>,
        container: &str,
        image: &str,
    ) -> impl Future<Output = Result<Vec<String>, ClusterError>> + Send;
}
