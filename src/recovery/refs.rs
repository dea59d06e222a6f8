//! Recovery by comparing refs, for any forge: list the repository's branches and tags
//! (`git ls-remote`, with the project's credentials as the checkout uses them) and compare
//! them with the last listing. A ref that is new or moved since, that deploybot would act on,
//! and whose push (ref, sha) was never queued, is recorded as a recovered push.
//!
//! What deploybot acts on: every tag (the repository's own pipeline, read by the worker at
//! that commit, says which tags push images, as for a delivered tag push), and a branch that
//! an environment deploys. The first listing of a project is only remembered: refs that were
//! there before deploybot first looked are history, not missed pushes.

use std::collections::BTreeMap;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::checkout::{list_refs, ListingLimits};
use crate::config::{Project, Settings};
use crate::domain::{CommitSha, GitRef, RefKind};
use crate::forge::Push;
use crate::store::{Recorded, RecoveryLedger, Store, StoreError};

/// Who a recovered push names as its pusher: nobody pushed it to deploybot.
const PUSHER: &str = "(recovered by deploybot)";

pub struct RefRecovery<'a> {
    pub settings: &'a Settings,
    pub store: &'a Store,
    pub ledger: &'a Arc<RecoveryLedger>,
}

/// What one comparison did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compared {
    /// Pushes recorded and queued.
    pub recovered: Vec<(GitRef, CommitSha, i64)>,
    /// The project's first listing: remembered, nothing recovered.
    pub first_listing: bool,
    /// Missed pushes left for the next run (over `max_recovered`).
    pub left: usize,
}

impl RefRecovery<'_> {
    pub async fn compare(&self, project: &Project) -> Result<Compared, String> {
        let limits = ListingLimits {
            timeout: self.settings.recovery.list_timeout,
            max_bytes: self.settings.recovery.max_listing_bytes,
        };
        let listing = list_refs(&project.clone_url, project.git_credentials.as_ref(), limits)
            .await
            .map_err(|e| e.to_string())?;
        let name = project.name.to_string();
        let known = self
            .ledger_call({
                let name = name.clone();
                move |ledger| ledger.known_refs(&name)
            })
            .await?;
        let Some(known) = known else {
            self.remember(&name, as_text(&listing)).await?;
            return Ok(Compared {
                first_listing: true,
                ..Compared::default()
            });
        };
        let mut compared = Compared::default();
        let mut remembered = BTreeMap::new();
        for (git_ref, sha) in listing {
            let before = known.get(git_ref.as_ref()).cloned();
            if before.as_deref() == Some(sha.as_ref()) || !self.acts_on(project, &git_ref) {
                remembered.insert(git_ref.to_string(), sha.to_string());
                continue;
            }
            if compared.recovered.len() as u32 >= self.settings.recovery.max_recovered {
                compared.left += 1;
                if let Some(before) = before {
                    remembered.insert(git_ref.to_string(), before);
                }
                continue;
            }
            if let Some(job) = self.recover(project, &git_ref, &sha, before).await? {
                compared.recovered.push((git_ref.clone(), sha.clone(), job));
            }
            remembered.insert(git_ref.to_string(), sha.to_string());
        }
        self.remember(&name, remembered).await?;
        Ok(compared)
    }

    /// Tags always; a branch when an environment deploys it.
    fn acts_on(&self, project: &Project, git_ref: &GitRef) -> bool {
        git_ref.kind() == RefKind::Tag
            || self
                .settings
                .environments
                .iter()
                .any(|e| e.takes(project.name.as_ref(), git_ref))
    }

    /// Records the push (ref, sha) as recovered, unless a delivery of it was queued; returns
    /// the job it queued.
    async fn recover(
        &self,
        project: &Project,
        git_ref: &GitRef,
        sha: &CommitSha,
        before: Option<String>,
    ) -> Result<Option<i64>, String> {
        let queued = self
            .ledger_call({
                let (name, r, s) = (
                    project.name.to_string(),
                    git_ref.to_string(),
                    sha.to_string(),
                );
                move |ledger| ledger.push_recorded(&name, &r, &s)
            })
            .await?;
        if queued {
            return Ok(None);
        }
        let push = Push {
            repository: project.repository.clone(),
            git_ref: git_ref.clone(),
            sha: sha.clone(),
            before: before
                .and_then(|b| CommitSha::parse(&b).ok())
                .unwrap_or_else(CommitSha::zero),
            pusher: PUSHER.into(),
            clone_url: project.clone_url.clone(),
            head_commit_message: None,
        };
        let record = crate::intake::recovered_push(
            self.settings.report.base_url.as_deref(),
            project,
            push,
            OffsetDateTime::now_utc(),
        );
        match self.store.record(record).await.map_err(|e| e.to_string())? {
            Recorded::Queued { job } => Ok(Some(job)),
            _ => Ok(None),
        }
    }

    async fn remember(&self, project: &str, refs: BTreeMap<String, String>) -> Result<(), String> {
        let project = project.to_owned();
        self.ledger_call(move |ledger| ledger.remember_refs(&project, &refs))
            .await
    }

    async fn ledger_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RecoveryLedger) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        super::on_ledger(self.ledger, f).await
    }
}

fn as_text(listing: &BTreeMap<GitRef, CommitSha>) -> BTreeMap<String, String> {
    listing
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string()))
        .collect()
}
