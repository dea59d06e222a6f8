//! Whose turn it is to roll out a Deployment: a lock per Deployment in this process, and a
//! turn in the store (`store/turns.rs`) that other processes wait for too, held under a lease
//! that is renewed while the rollout runs.

use std::sync::Arc;
use std::time::Duration;

use super::{Deployer, Note};
use crate::config::Environment;
use crate::deploy::cluster::{Cluster, DeploymentRef};
use crate::store::{Jobs, StoreError, TurnClaim};

/// How long a turn on a Deployment lasts unless renewed (it is renewed at a third of this);
/// the bound on how long a hung process can hold a Deployment.
const TURN_LEASE: Duration = Duration::from_secs(30);
/// How often a rollout waiting for another process's turn asks again.
const TURN_POLL: Duration = Duration::from_millis(250);

/// A rollout's turn on one Deployment: nobody else rolls it out until [`Turn::end`]. Dropped
/// without it (a stopped job), the renewal stops and the turn lapses.
pub(crate) struct Turn {
    _in_this_process: tokio::sync::OwnedMutexGuard<()>,
    claim: TurnClaim,
    renewal: tokio::task::JoinHandle<()>,
    jobs: Arc<Jobs>,
}

impl Turn {
    pub(crate) async fn end(self) {
        self.renewal.abort();
        let claim = self.claim.clone();
        if let Err(e) = self.jobs.call(move |jobs| jobs.end_turn(&claim)).await {
            // Not fatal: the turn lapses with its lease.
            tracing::warn!(error = %e, deployment = %self.claim.deployment, "Could not end a rollout's turn");
        }
    }

    /// Whether this is the turn on `deployment` in `environment`.
    pub(super) fn is_on(&self, environment: &str, deployment: &str) -> bool {
        (
            self.claim.environment.as_str(),
            self.claim.deployment.as_str(),
        ) == (environment, deployment)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl<C: Cluster> Deployer<C> {
    /// Waits for the turn on `deployment` in `environment` (noting who has it, once each),
    /// then holds it, renewed, until [`Turn::end`].
    pub(crate) async fn turn(
        &self,
        environment: &Environment,
        deployment: &str,
        what: String,
        note: Note<'_>,
    ) -> Result<Turn, StoreError> {
        let target = DeploymentRef {
            namespace: environment.namespace.to_string(),
            name: deployment.to_owned(),
        };
        let local = self
            .locks
            .lock((environment.name.clone(), target.clone()))
            .await;
        let claim = TurnClaim {
            environment: environment.name.clone(),
            namespace: target.namespace.clone(),
            deployment: target.name.clone(),
            holder: self.holder.clone(),
            pid: std::process::id(),
            what,
        };
        let mut waiting_for = None;
        loop {
            let ask = claim.clone();
            match self
                .jobs
                .call(move |jobs| jobs.take_turn(&ask, TURN_LEASE))
                .await?
            {
                None => break,
                Some(other) => {
                    if waiting_for.as_ref() != Some(&other) {
                        note(&format!("waiting: {other} is rolling out {target}"));
                        waiting_for = Some(other);
                    }
                    tokio::time::sleep(TURN_POLL).await;
                }
            }
        }
        let renewal = tokio::spawn(renew(self.jobs.clone(), claim.clone()));
        Ok(Turn {
            _in_this_process: local,
            claim,
            renewal,
            jobs: self.jobs.clone(),
        })
    }
}

/// Keeps a turn from lapsing while its rollout runs (stopped with the turn).
async fn renew(jobs: Arc<Jobs>, claim: TurnClaim) {
    loop {
        tokio::time::sleep(TURN_LEASE / 3).await;
        let ask = claim.clone();
        match jobs
            .call(move |jobs| jobs.renew_turn(&ask, TURN_LEASE))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(deployment = %claim.deployment, "A rollout's turn lapsed and another holder took it")
            }
            Err(e) => {
                tracing::warn!(error = %e, deployment = %claim.deployment, "Could not renew a rollout's turn")
            }
        }
    }
}
