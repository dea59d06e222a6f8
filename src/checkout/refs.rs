//! A repository's branches and tags as its remote has them (`git ls-remote`), for recovery.
//! The remote is untrusted: its listing is bounded in time and size, and a line that is not
//! `<sha>\t<ref>` with a full sha and a branch or tag ref is skipped, not trusted.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{git_command, last_line, CheckoutError, GitCredentials};
use crate::domain::{CommitSha, GitRef, RefKind};

/// What a listing may cost.
#[derive(Debug, Clone, Copy)]
pub struct ListingLimits {
    pub timeout: Duration,
    pub max_bytes: u64,
}

/// Every branch and tag of the repository at `url`, with the object each names (for an
/// annotated tag, the tag object: what a forge's push event reports as `after`).
pub async fn list_refs(
    url: &str,
    credentials: Option<&GitCredentials>,
    limits: ListingLimits,
) -> Result<BTreeMap<GitRef, CommitSha>, CheckoutError> {
    let failed = |reason: String| CheckoutError::Git {
        step: "ls-remote",
        reason,
    };
    let mut child = git_command(&["ls-remote", "--heads", "--tags", url], credentials)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(failed("git's output was not captured".into()));
    };
    let listing = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut bounded = stdout.take(limits.max_bytes + 1);
        let mut stderr = (&mut stderr).take(64 * 1024);
        let (read_out, _) =
            tokio::join!(bounded.read_to_end(&mut out), stderr.read_to_end(&mut err));
        read_out.map_err(|e| failed(e.to_string()))?;
        if out.len() as u64 > limits.max_bytes {
            return Err(failed(format!(
                "the listing is over {} bytes (recovery.max_listing_bytes)",
                limits.max_bytes
            )));
        }
        let status = child.wait().await.map_err(|e| failed(e.to_string()))?;
        if !status.success() {
            return Err(failed(last_line(&err)));
        }
        Ok(parse_listing(&out))
    };
    // Dropping the future kills git (kill_on_drop).
    tokio::time::timeout(limits.timeout, listing)
        .await
        .map_err(|_| {
            failed(format!(
                "no answer within {} s (recovery.list_timeout_secs)",
                limits.timeout.as_secs()
            ))
        })?
}

/// `<sha>\t<ref>` lines; peeled (`^{}`) lines and anything not a branch or tag are skipped.
fn parse_listing(out: &[u8]) -> BTreeMap<GitRef, CommitSha> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            if name.ends_with("^{}") {
                return None;
            }
            let git_ref = GitRef::parse(name).ok()?;
            if git_ref.kind() == RefKind::Pull {
                return None;
            }
            Some((git_ref, CommitSha::parse(sha).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_keeps_branches_and_tags_and_skips_peeled_and_odd_lines() {
        let sha = "a".repeat(40);
        let other = "b".repeat(40);
        let out = format!(
            "{sha}\trefs/heads/main\n{other}\trefs/tags/v1\n{sha}\trefs/tags/v1^{{}}\n\
             {sha}\tHEAD\n{sha}\trefs/pull/1/head\nnot a line\nshort\trefs/tags/v2\n"
        );
        let refs = parse_listing(out.as_bytes());
        let names: Vec<String> = refs.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["refs/heads/main", "refs/tags/v1"]);
        assert_eq!(
            refs[&GitRef::parse("refs/tags/v1").unwrap()].as_ref(),
            other
        );
    }
}
