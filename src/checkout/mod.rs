//! Checkout: the exact commit of a push, in a fresh per-job workspace, from a per-project bare
//! mirror that each fetch brings up to date incrementally.
//!
//! Runs the `git` command (its transports, proxies and credential handling are what users
//! already trust). Credentials never appear in a URL, a process argument or a log line: they
//! reach git as an `http.extraHeader` through `GIT_CONFIG_*` environment variables, which only
//! the same user can read.

mod dockerignore;
mod refs;
mod tree;

pub(crate) use refs::{list_refs, ListingLimits};
pub use tree::Tree;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("clone URL \"{0}\" is not an https, http, git, ssh or file URL")]
    BadUrl(String),
    #[error("git {step} failed: {reason}")]
    Git { step: &'static str, reason: String },
    #[error("commit {sha} is not in {url} (was the ref force-pushed away?)")]
    MissingCommit { sha: String, url: String },
    #[error("workspace {path}: {reason}")]
    Workspace { path: String, reason: String },
}

/// Basic credentials for private repositories over HTTP(S). `Debug` shows no token
/// (`SecretString` redacts itself).
#[derive(Debug)]
pub struct GitCredentials {
    pub username: String,
    pub token: SecretString,
}

impl GitCredentials {
    /// The `http.extraHeader` value git sends them as (never a URL or an argument).
    pub fn header(&self) -> SecretString {
        let basic = BASE64.encode(format!("{}:{}", self.username, self.token.expose_secret()));
        SecretString::from(format!("Authorization: Basic {basic}"))
    }
}

pub struct Checkouts {
    mirrors: PathBuf,
    workspaces: PathBuf,
    /// One checkout per project mirror at a time: two `git fetch`es into one repository race
    /// on its lock files (FETCH_HEAD, packed-refs) and one of them fails.
    mirror_locks: crate::keyed_lock::KeyedLocks<String>,
}

impl Checkouts {
    pub fn new(data_dir: &Path) -> Checkouts {
        // Absolute: git runs with `-C <mirror>`, and the engine bind-mounts the workspace.
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Checkouts {
            mirrors: data_dir.join("mirrors"),
            workspaces: data_dir.join("workspaces"),
            mirror_locks: Default::default(),
        }
    }

    pub fn workspace(&self, job: i64) -> PathBuf {
        self.workspaces.join(format!("job-{job}"))
    }

    /// A path for the job's own files beside (never inside) its workspace, e.g. a build
    /// context tar: steps cannot see or replace it.
    pub fn scratch(&self, job: i64, name: &str) -> PathBuf {
        self.workspaces
            .join(format!("job-{job}.scratch"))
            .join(name)
    }

    /// Fetches `git_ref` from `url` into the project's mirror and writes commit `sha` (no
    /// `.git`) into the job's workspace, which every step user may write to.
    pub async fn checkout(
        &self,
        project: &str,
        url: &str,
        git_ref: &str,
        sha: &str,
        job: i64,
        credentials: Option<&GitCredentials>,
    ) -> Result<PathBuf, CheckoutError> {
        // The configuration chose the URL and its scheme (`worker.clone_schemes`); this only
        // refuses what git would read as something other than a repository URL.
        let known = ["https://", "http://", "git://", "ssh://", "file://"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(CheckoutError::BadUrl(url.to_owned()));
        }
        let mirror = {
            let _one_at_a_time = self.mirror_locks.lock(project.to_owned()).await;
            self.fetch(project, url, git_ref, sha, credentials).await?
        };
        self.write_workspace(&mirror, sha, job).await
    }

    /// Brings the project's bare mirror up to date with `git_ref` from `url`, and makes sure
    /// it has commit `sha` (asked for by id when the ref moved on since the push).
    async fn fetch(
        &self,
        project: &str,
        url: &str,
        git_ref: &str,
        sha: &str,
        credentials: Option<&GitCredentials>,
    ) -> Result<PathBuf, CheckoutError> {
        let mirror = self.fetch_ref(project, url, git_ref, credentials).await?;
        let mirror_arg = mirror.to_string_lossy().into_owned();
        let has_commit = git(
            &[
                "-C",
                &mirror_arg,
                "cat-file",
                "-e",
                &format!("{sha}^{{commit}}"),
            ],
            None,
            "cat-file",
        )
        .await
        .is_ok();
        if !has_commit {
            // The ref moved on since the push: ask for the commit itself.
            git(
                &["-C", &mirror_arg, "fetch", "--quiet", url, sha],
                credentials,
                "fetch",
            )
            .await
            .map_err(|_| CheckoutError::MissingCommit {
                sha: sha.to_owned(),
                url: url.to_owned(),
            })?;
        }

        Ok(mirror)
    }

    /// Brings `git_ref` of the project's bare mirror (made on first use) up to date from
    /// `url`; the caller holds the mirror's lock.
    async fn fetch_ref(
        &self,
        project: &str,
        url: &str,
        git_ref: &str,
        credentials: Option<&GitCredentials>,
    ) -> Result<PathBuf, CheckoutError> {
        let mirror = self.mirrors.join(format!("{project}.git"));
        let mirror_arg = mirror.to_string_lossy().into_owned();
        if !mirror.join("HEAD").exists() {
            private_dir(&self.mirrors).await?;
            git(&["init", "--bare", "--quiet", &mirror_arg], None, "init").await?;
        }
        let refspec = format!("+{git_ref}:{git_ref}");
        let fetch = [
            "-C",
            &mirror_arg,
            "fetch",
            "--quiet",
            "--force",
            "--no-tags",
            url,
            &refspec,
        ];
        git(&fetch, credentials, "fetch").await?;
        Ok(mirror)
    }

    /// Writes commit `sha` of `mirror` (no `.git`) into the job's fresh workspace.
    async fn write_workspace(
        &self,
        mirror: &Path,
        sha: &str,
        job: i64,
    ) -> Result<PathBuf, CheckoutError> {
        let mirror_arg = mirror.to_string_lossy().into_owned();
        let workspace = self.workspace(job);
        let _ = tokio::fs::remove_dir_all(&workspace).await;
        private_dir(&self.workspaces).await?;
        for dir in [&workspace, &self.scratch(job, "")] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| workspace_error(dir, e))?;
        }
        let archive = self.workspaces.join(format!("job-{job}.tar"));
        git(
            &[
                "-C",
                &mirror_arg,
                "archive",
                "--format=tar",
                "-o",
                &archive.to_string_lossy(),
                sha,
            ],
            None,
            "archive",
        )
        .await?;
        let (from, into) = (archive.clone(), workspace.clone());
        tokio::task::spawn_blocking(move || unpack(&from, &into))
            .await
            .map_err(|e| workspace_error(&workspace, std::io::Error::other(e.to_string())))??;
        let _ = tokio::fs::remove_file(&archive).await;
        Ok(workspace)
    }

    /// The id of what `path` (a directory or file of the commit, `.` for its root) holds at
    /// commit `sha`: equal ids mean byte-identical contents.
    pub async fn object_id(
        &self,
        project: &str,
        sha: &str,
        path: &str,
    ) -> Result<String, CheckoutError> {
        let mirror = self.mirrors.join(format!("{project}.git"));
        let revision = match path {
            "." | "" => format!("{sha}^{{tree}}"),
            path => format!("{sha}:{path}"),
        };
        let output = Command::new("git")
            .arg("-C")
            .arg(&mirror)
            .args(["rev-parse", "--verify", "--quiet", &revision])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| CheckoutError::Git {
                step: "rev-parse",
                reason: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(CheckoutError::Git {
                step: "rev-parse",
                reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The text of `path` at the head of `branch` of `url` (fetched into the project's mirror
    /// first), None when the branch has no such file: what a pull request from a fork is
    /// built by is its base branch's, never its own. At most `max_bytes`.
    pub async fn read_on_branch(
        &self,
        project: &str,
        url: &str,
        branch: &crate::domain::GitRef,
        path: &str,
        max_bytes: u64,
        credentials: Option<&GitCredentials>,
    ) -> Result<Option<String>, CheckoutError> {
        let mirror = {
            let _one_at_a_time = self.mirror_locks.lock(project.to_owned()).await;
            self.fetch_ref(project, url, branch.as_ref(), credentials)
                .await?
        };
        let mirror_arg = mirror.to_string_lossy().into_owned();
        let object = format!("{branch}:{path}");
        let Ok(size) =
            git_output(&["-C", &mirror_arg, "cat-file", "-s", &object], "cat-file").await
        else {
            return Ok(None);
        };
        if size
            .trim()
            .parse::<u64>()
            .map_or(true, |size| size > max_bytes)
        {
            return Err(CheckoutError::Git {
                step: "cat-file",
                reason: format!("{path} on {branch} is over {max_bytes} bytes"),
            });
        }
        git_output(
            &["-C", &mirror_arg, "cat-file", "blob", &object],
            "cat-file",
        )
        .await
        .map(Some)
    }

    /// Removes a job's workspace and scratch files (after the job, whatever its result).
    pub async fn clean(&self, job: i64) {
        let _ = tokio::fs::remove_dir_all(self.workspace(job)).await;
        let _ = tokio::fs::remove_dir_all(self.scratch(job, "")).await;
        let _ = tokio::fs::remove_file(self.workspaces.join(format!("job-{job}.tar"))).await;
    }
}

/// A directory only deploybot's own user may enter: the mirrors and every job's workspace sit
/// in these, so no other user of the host (and no other job, whose steps see only their own
/// workspace) reaches them.
async fn private_dir(path: &Path) -> Result<(), CheckoutError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|e| workspace_error(path, e))?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(|e| workspace_error(path, e))
}

fn workspace_error(path: &Path, e: std::io::Error) -> CheckoutError {
    CheckoutError::Workspace {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Unpacks the archive and opens the tree to every user: steps run as a non-root user that
/// must write build outputs into it.
fn unpack(archive: &Path, into: &Path) -> Result<(), CheckoutError> {
    let file = std::fs::File::open(archive).map_err(|e| workspace_error(archive, e))?;
    tar::Archive::new(file)
        .unpack(into)
        .map_err(|e| workspace_error(into, e))?;
    let mut stack = vec![into.to_path_buf()];
    while let Some(path) = stack.pop() {
        let metadata = std::fs::symlink_metadata(&path).map_err(|e| workspace_error(&path, e))?;
        if metadata.file_type().is_symlink() {
            continue;
        }
        let mode = metadata.permissions().mode();
        let open = if metadata.is_dir() {
            mode | 0o777
        } else {
            mode | 0o666
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open))
            .map_err(|e| workspace_error(&path, e))?;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| workspace_error(&path, e))? {
                stack.push(entry.map_err(|e| workspace_error(&path, e))?.path());
            }
        }
    }
    Ok(())
}

/// Runs git with no terminal prompts; on failure, its stderr (which carries no credential:
/// those are only in the environment) becomes the reason.
async fn git(
    args: &[&str],
    credentials: Option<&GitCredentials>,
    step: &'static str,
) -> Result<(), CheckoutError> {
    git_stdout(args, credentials, step).await.map(drop)
}

/// What a local git command printed, as text (nothing here reaches the network).
async fn git_output(args: &[&str], step: &'static str) -> Result<String, CheckoutError> {
    String::from_utf8(git_stdout(args, None, step).await?).map_err(|_| CheckoutError::Git {
        step,
        reason: "not UTF-8 text".into(),
    })
}

/// Runs git as [`git`] does and answers what it printed.
async fn git_stdout(
    args: &[&str],
    credentials: Option<&GitCredentials>,
    step: &'static str,
) -> Result<Vec<u8>, CheckoutError> {
    let output = git_command(args, credentials)
        .output()
        .await
        .map_err(|e| CheckoutError::Git {
            step,
            reason: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(CheckoutError::Git {
        step,
        reason: last_line(&output.stderr),
    })
}

/// git with no terminal prompts, the credentials (if any) in its environment only, killed
/// when dropped.
fn git_command(args: &[&str], credentials: Option<&GitCredentials>) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(credentials) = credentials {
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", credentials.header().expose_secret());
    }
    command
}

/// git's last line on stderr: its reason (it carries no credential: those are only in the
/// environment).
fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .last()
        .unwrap_or("no output")
        .trim()
        .chars()
        .take(300)
        .collect()
}
