//! GitHub commit statuses through octocrab: `POST /repos/{owner}/{repo}/statuses/{sha}`
//! with `state`, `target_url`, `description`, `context`; the token as a bearer token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use octocrab::Octocrab;
use secrecy::ExposeSecret;

use super::{retry_after, DeliveryError, Notifier, Report, StatusState};
use crate::config::StatusAuth;

pub struct GitHubStatuses {
    client: Octocrab,
}

impl GitHubStatuses {
    /// `api_url`: `https://api.github.com`, or a GitHub Enterprise `…/api/v3`.
    pub fn new(
        api_url: &str,
        auth: &StatusAuth,
        timeout: Duration,
    ) -> Result<GitHubStatuses, String> {
        let builder = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|_| format!("\"{api_url}\" is not a URL"))?
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout));
        let client = match auth {
            StatusAuth::Token(token) => builder
                .personal_token(token.expose_secret().to_owned())
                .build()
                .map_err(|e| format!("GitHub client: {e}"))?,
            StatusAuth::GitHubApp {
                app_id,
                installation_id,
                private_key,
            } => {
                // The message of a key error never carries the key.
                let key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(private_key.expose_secret().as_bytes())
                        .map_err(|_| {
                            "github_app_key is not an RSA private key in PEM form".to_owned()
                        })?;
                builder
                    .app((*app_id).into(), key)
                    .build()
                    .map_err(|e| format!("GitHub client: {e}"))?
                    .installation((*installation_id).into())
                    .map_err(|e| format!("GitHub App installation: {e}"))?
            }
        };
        Ok(GitHubStatuses { client })
    }
}

fn state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error => "error",
    }
}

/// GitHub's rate limit: a 403 or 429 with `x-ratelimit-remaining: 0` means "wait until
/// `x-ratelimit-reset`", whatever the body says.
fn rate_limit_wait(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.parse::<u64>().ok();
    if header("x-ratelimit-remaining")? != 0 {
        return None;
    }
    let reset = header("x-ratelimit-reset")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

impl Notifier for GitHubStatuses {
    async fn deliver(&self, report: &Report) -> Result<(), DeliveryError> {
        let Report::Status {
            repository,
            sha,
            context,
            state: status,
            description,
            target_url,
            ..
        } = report
        else {
            return Err(DeliveryError::from_status(400, None, "not a commit status"));
        };
        let body = serde_json::json!({
            "state": state(*status),
            "target_url": target_url,
            "description": description,
            "context": context,
        });
        // Relative: octocrab puts the base URI in front, and attaches credentials only to
        // requests it sends to its own base.
        let uri = format!("/repos/{repository}/statuses/{sha}");
        let response = self
            .client
            ._post(uri, Some(&body))
            .await
            .map_err(|e| DeliveryError::transient(format!("GitHub unreachable: {e}")))?;
        let code = response.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        let headers = response.headers().clone();
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        if let Some(wait) = rate_limit_wait(&headers) {
            return Err(DeliveryError {
                reason: format!("HTTP {code}: GitHub rate limit ({message})"),
                retry_after: Some(wait),
                permanent: false,
            });
        }
        Err(DeliveryError::from_status(
            code,
            retry_after(&headers),
            &message,
        ))
    }
}
