//! GitLab commit statuses: `POST /projects/:id/statuses/:sha` with `state`, `ref`, `name`,
//! `target_url`, `description`; the token in `PRIVATE-TOKEN`.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{send, DeliveryError, Notifier, Report, StatusState};

pub struct GitLabStatuses {
    client: reqwest::Client,
    api_url: String,
    token: SecretString,
}

impl GitLabStatuses {
    /// `api_url`: the instance's API root, e.g. `https://gitlab.example.com/api/v4`.
    pub fn new(
        api_url: &str,
        token: SecretString,
        timeout: Duration,
    ) -> Result<GitLabStatuses, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("GitLab client: {}", e.without_url()))?;
        Ok(GitLabStatuses {
            client,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token,
        })
    }
}

fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure | StatusState::Error => "failed",
    }
}

/// `group/sub/project` as GitLab's URL-encoded project id.
fn project_id(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

impl Notifier for GitLabStatuses {
    async fn deliver(&self, report: &Report) -> Result<(), DeliveryError> {
        let Report::Status {
            repository,
            sha,
            git_ref,
            context,
            state: status,
            description,
            target_url,
        } = report
        else {
            return Err(DeliveryError::from_status(400, None, "not a commit status"));
        };
        let ref_name = git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(git_ref);
        let mut body = serde_json::json!({
            "state": state(*status),
            "ref": ref_name,
            "name": context,
            "description": description,
        });
        if let Some(url) = target_url {
            body["target_url"] = url.clone().into();
        }
        let url = format!(
            "{}/projects/{}/statuses/{sha}",
            self.api_url,
            project_id(repository)
        );
        let request = self
            .client
            .post(url)
            .header("PRIVATE-TOKEN", self.token.expose_secret())
            .json(&body);
        send(request, "GitLab").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_group_paths_are_url_encoded_as_one_id() {
        assert_eq!(project_id("group/sub/project"), "group%2Fsub%2Fproject");
    }
}
