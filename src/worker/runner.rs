//! What every stage of a job works with: the worker's parts ([`Runner`]), one job's context
//! ([`JobContext`]), and how the deploy stage ended for the job ([`Deployed`]). A module of
//! its own so that `job.rs`, which runs the stages, and the stage files (`deploy_stage.rs`,
//! `steps.rs`, ...) both depend on it instead of on each other.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::logs::JobLog;
use super::reporter::Reporter;
use crate::checkout::{Checkouts, Tree};
use crate::config::{Project, Settings};
use crate::deploy::Cluster;
use crate::domain::{RefKind, StageName};
use crate::executor::Executor;
use crate::intake::PushEvent;
use crate::pipeline::Service;
use crate::report::StatusState;
use crate::store::{ClaimedJob, Jobs, NewReport};

pub(super) struct Runner<E: Executor, C: Cluster> {
    pub(super) settings: Arc<Settings>,
    pub(super) deployer: Arc<crate::deploy::Deployer<C>>,
    pub(super) jobs: Arc<Jobs>,
    pub(super) executor: Arc<E>,
    pub(super) checkouts: Arc<Checkouts>,
    /// The registry images are pushed to, for what is done there directly (a tag copied).
    pub(super) registry: Option<Arc<crate::registry::RegistryClient>>,
    pub(super) shutdown: CancellationToken,
    /// Wakes the report sender after statuses are queued.
    pub(super) reports: Arc<tokio::sync::Notify>,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// When each (service, stage) started running, for the stage-duration histogram.
    pub(super) stage_starts:
        std::sync::Mutex<std::collections::HashMap<(String, StageName), std::time::Instant>>,
}

/// What every service of one job is built with.
pub(super) struct JobContext<'a> {
    pub(super) job: &'a ClaimedJob,
    pub(super) project: &'a Project,
    pub(super) reporter: Option<&'a Reporter>,
    pub(super) event: &'a PushEvent,
    pub(super) workspace: &'a std::path::Path,
    /// The checkout, read only through this (nothing outside it can be reached).
    pub(super) tree: Arc<Tree>,
    pub(super) pushes: bool,
    /// A pull request from a fork: untrusted code, built by its base branch's pipeline.
    pub(super) fork: bool,
    /// The environments this push deploys to (none unless it pushes).
    pub(super) environments: Vec<&'a crate::config::Environment>,
    pub(super) log: &'a JobLog,
    pub(super) cancel: &'a CancellationToken,
}

impl JobContext<'_> {
    /// Which dependency caches the job's steps use: tags (releases), branches, pull requests
    /// and forks' pull requests each have their own, so a build cannot poison what a more
    /// trusted one is built with.
    pub(super) fn caches(&self) -> &'static str {
        match self.job.git_ref.kind() {
            RefKind::Tag => "tags",
            RefKind::Branch => "branches",
            RefKind::Pull if self.fork => "forks",
            RefKind::Pull => "pulls",
        }
    }

    /// Whether steps that ask for the network, and image builds, get it: where the project
    /// allows it, and for a fork only where `fork_network` does too.
    pub(super) fn network(&self) -> bool {
        super::policy::Network::for_job(self.project, self.fork).allowed
    }

    /// Whether `service` rolls out after the build.
    pub(super) fn deploys(&self, service: &Service) -> bool {
        self.pushes && service.deployment.is_some() && !self.environments.is_empty()
    }

    /// The commit status for `service`, if the project reports statuses.
    pub(super) fn status(&self, service: &str, state: StatusState, words: &str) -> Vec<NewReport> {
        self.reporter
            .map(|r| r.status(Some(service), state, words))
            .unwrap_or_default()
    }
}

/// How the deploy stage ended for the whole job.
pub(super) enum Deployed {
    /// Nothing of this push deployed (none of its services deploy, or every rollout was
    /// skipped by policy).
    Nothing,
    /// Every rollout is in place (or was skipped by policy).
    All,
    /// Some rollout was rolled back (and none failed outright): why.
    RolledBack(String),
    Failed(String),
}
