//! GitHub's record of a repository webhook's deliveries (kept 3 days on github.com):
//! `GET /repos/{owner}/{repo}/hooks/{hook_id}/deliveries` (100 a page, older pages by the
//! `cursor` in the `Link` header) and `POST …/deliveries/{delivery_id}/attempts` (202), which
//! sends the delivery again with the same `X-GitHub-Delivery` GUID. A GUID failed when none of
//! its attempts has the status `OK`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::hooks::{bounded_json, send, DeliveryLog, FailedDelivery, LogError, MAX_PAGE_BYTES};
use crate::config::HookAccess;
use crate::domain::RepoSlug;

pub struct GitHubHookLog {
    client: reqwest::Client,
    /// `{api}/repos/{owner}/{repo}/hooks/{id}/deliveries`
    deliveries: String,
    token: SecretString,
}

/// One attempt, as the list shows it (the fields recovery reads).
#[derive(Debug, Deserialize)]
struct Attempt {
    id: u64,
    guid: String,
    status: String,
    event: String,
}

impl GitHubHookLog {
    pub fn new(
        hook: &HookAccess,
        repository: &RepoSlug,
        timeout: Duration,
    ) -> Result<GitHubHookLog, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("GitHub client: {}", e.without_url()))?;
        Ok(GitHubHookLog {
            client,
            deliveries: format!(
                "{}/repos/{}/hooks/{}/deliveries",
                hook.api_url.trim_end_matches('/'),
                repository.as_ref(),
                hook.id
            ),
            token: hook.token.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", "deploybot")
    }

    /// One page of attempts, and the cursor of the next (older) page.
    async fn page(&self, cursor: Option<&str>) -> Result<(Vec<Attempt>, Option<String>), LogError> {
        let mut request = self
            .request(reqwest::Method::GET, &self.deliveries)
            .query(&[("per_page", "100")]);
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let what = "listing the hook's deliveries";
        let response = send(request, what).await?;
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_cursor);
        Ok((bounded_json(response, MAX_PAGE_BYTES, what).await?, next))
    }
}

impl DeliveryLog for GitHubHookLog {
    const HOW: &'static str = "github_redelivery";

    async fn failed_pushes(&self, max_pages: u32) -> Result<Vec<FailedDelivery>, LogError> {
        let mut attempts = Vec::new();
        let mut cursor = None;
        for _ in 0..max_pages {
            let (page, next) = self.page(cursor.as_deref()).await?;
            attempts.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(failed_pushes(attempts))
    }

    async fn redeliver(&self, delivery: &FailedDelivery) -> Result<(), LogError> {
        let url = format!("{}/{}/attempts", self.deliveries, delivery.attempt);
        send(
            self.request(reqwest::Method::POST, &url),
            "asking GitHub to redeliver",
        )
        .await
        .map(drop)
    }
}

/// Push GUIDs none of whose attempts succeeded, each with its newest attempt (the list is
/// newest first), oldest GUID first so that pushes arrive in the order they were made.
fn failed_pushes(attempts: Vec<Attempt>) -> Vec<FailedDelivery> {
    let mut by_guid: BTreeMap<String, (bool, u64, usize)> = BTreeMap::new();
    for (position, attempt) in attempts.into_iter().enumerate() {
        if attempt.event != "push" {
            continue;
        }
        let entry = by_guid
            .entry(attempt.guid)
            .or_insert((false, attempt.id, position));
        entry.0 |= attempt.status == "OK";
    }
    let mut failed: Vec<(usize, FailedDelivery)> = by_guid
        .into_iter()
        .filter(|(_, (ok, _, _))| !ok)
        .map(|(guid, (_, attempt, position))| {
            (
                position,
                FailedDelivery {
                    delivery_id: guid,
                    attempt,
                },
            )
        })
        .collect();
    failed.sort_by_key(|(position, _)| std::cmp::Reverse(*position));
    failed.into_iter().map(|(_, delivery)| delivery).collect()
}

/// The `cursor` of the `rel="next"` link. Only the cursor is taken: the URL in an API reply
/// is not followed.
fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.split(';').any(|p| p.trim() == "rel=\"next\"") {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        let query = target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            // Decoded: the query builder encodes it again.
            (key == "cursor").then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: u64, guid: &str, status: &str, event: &str) -> Attempt {
        Attempt {
            id,
            guid: guid.into(),
            status: status.into(),
            event: event.into(),
        }
    }

    #[test]
    fn a_push_guid_fails_only_when_none_of_its_attempts_is_ok_and_the_oldest_comes_first() {
        let failed = failed_pushes(vec![
            attempt(9, "newest", "Invalid HTTP Response: 503", "push"),
            attempt(8, "redelivered", "OK", "push"),
            attempt(7, "other-event", "failed to connect to host", "issues"),
            attempt(6, "redelivered", "failed to connect to host", "push"),
            attempt(5, "oldest", "failed to connect to host", "push"),
            attempt(4, "oldest", "timed out", "push"),
        ]);
        assert_eq!(
            failed,
            vec![
                FailedDelivery {
                    delivery_id: "oldest".into(),
                    attempt: 5
                },
                FailedDelivery {
                    delivery_id: "newest".into(),
                    attempt: 9
                },
            ]
        );
    }

    #[test]
    fn the_next_page_is_the_cursor_of_the_next_link_only() {
        let link = "<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_123>; rel=\"next\", <https://api.github.com/repos/o/r/hooks/1/deliveries?cursor=v1_1>; rel=\"prev\"";
        assert_eq!(next_cursor(link).as_deref(), Some("v1_123"));
        let encoded = "<https://api.github.com/app/hook/deliveries?cursor=v1%3D12>; rel=\"next\"";
        assert_eq!(next_cursor(encoded).as_deref(), Some("v1=12"));
        assert_eq!(next_cursor("<https://x/?cursor=a>; rel=\"prev\""), None);
        assert_eq!(next_cursor("garbage"), None);
    }
}
