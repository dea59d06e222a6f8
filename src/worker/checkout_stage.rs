//! The job's first stage: the exact commit, fetched from the project's own repository URL
//! (never one a payload names), within the step timeout and stopped by cancel or supersede
//! like every other stage (a git server that never answers holds no worker slot).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use crate::checkout::Tree;
use crate::config::Project;
use crate::deploy::Cluster;
use crate::executor::Executor;
use crate::store::ClaimedJob;

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// The job's workspace and the confined view of it every later read goes through.
    pub(super) async fn checkout(
        &self,
        job: &ClaimedJob,
        project: &Project,
        cancel: &CancellationToken,
    ) -> Result<(PathBuf, Arc<Tree>), String> {
        let timeout = self.settings.worker.step_timeout;
        let fetch = self.checkouts.checkout(
            &job.project,
            &project.clone_url,
            job.git_ref.as_ref(),
            job.sha.as_ref(),
            job.id,
            project.git_credentials.as_ref(),
        );
        // Dropping the fetch kills git (`kill_on_drop`).
        let workspace = tokio::select! {
            fetched = tokio::time::timeout(timeout, fetch) => match fetched {
                Ok(fetched) => fetched.map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("timed out after {} s", timeout.as_secs())),
            },
            () = cancel.cancelled() => return Err("canceled".into()),
        };
        let tree = Tree::open(&workspace).map_err(|e| e.to_string())?;
        Ok((workspace, Arc::new(tree)))
    }
}
