//! GitLab's record of a project webhook's events (GitLab 17.3+, kept 7 days):
//! `GET /projects/:id/hooks/:hook_id/events?status=server_failure` (20 a page at most, pages
//! by `page`/`x-next-page`; `server_failure` also holds "internal error", GitLab's word for
//! no answer at all), and `POST …/events/:hook_event_id/resend` (GitLab 17.4+, 201, at most
//! 5 a minute per project and user), which sends the event again with the same
//! `Idempotency-Key`: the id deploybot records a GitLab delivery under.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::hooks::{bounded_json, send, DeliveryLog, FailedDelivery, LogError, MAX_PAGE_BYTES};
use crate::config::HookAccess;
use crate::domain::RepoSlug;

pub struct GitLabHookLog {
    client: reqwest::Client,
    /// `{api}/projects/{id}/hooks/{hook_id}/events`
    events: String,
    token: SecretString,
}

/// One logged event (the fields recovery reads).
#[derive(Debug, Deserialize)]
struct Event {
    id: u64,
    trigger: String,
    #[serde(default)]
    request_headers: BTreeMap<String, serde_json::Value>,
}

impl Event {
    /// The id the delivery carried: `Idempotency-Key` (kept by a resend), else the older
    /// `X-Gitlab-Event-UUID`, as intake reads them.
    fn delivery_id(&self) -> Option<String> {
        ["Idempotency-Key", "X-Gitlab-Event-UUID"]
            .into_iter()
            .find_map(|name| {
                self.request_headers
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .and_then(|(_, value)| value.as_str())
                    .map(str::to_owned)
            })
    }
}

impl GitLabHookLog {
    pub fn new(
        hook: &HookAccess,
        repository: &RepoSlug,
        timeout: Duration,
    ) -> Result<GitLabHookLog, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("GitLab client: {}", e.without_url()))?;
        let project = repository.as_ref().replace('%', "%25").replace('/', "%2F");
        Ok(GitLabHookLog {
            client,
            events: format!(
                "{}/projects/{project}/hooks/{}/events",
                hook.api_url.trim_end_matches('/'),
                hook.id
            ),
            token: hook.token.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("PRIVATE-TOKEN", self.token.expose_secret())
    }

    async fn page(&self, page: u32) -> Result<(Vec<Event>, bool), LogError> {
        let what = "listing the hook's events";
        let request = self.request(reqwest::Method::GET, &self.events).query(&[
            ("status", "server_failure".to_owned()),
            ("per_page", "20".to_owned()),
            ("page", page.to_string()),
        ]);
        let response = send(request, what).await?;
        let more = response
            .headers()
            .get("x-next-page")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty());
        Ok((bounded_json(response, MAX_PAGE_BYTES, what).await?, more))
    }
}

impl DeliveryLog for GitLabHookLog {
    const HOW: &'static str = "gitlab_resend";

    async fn failed_pushes(&self, max_pages: u32) -> Result<Vec<FailedDelivery>, LogError> {
        let mut events = Vec::new();
        for page in 1..=max_pages {
            let (found, more) = self.page(page).await?;
            events.extend(found);
            if !more {
                break;
            }
        }
        Ok(failed_pushes(events))
    }

    async fn redeliver(&self, delivery: &FailedDelivery) -> Result<(), LogError> {
        let url = format!("{}/{}/resend", self.events, delivery.attempt);
        send(
            self.request(reqwest::Method::POST, &url),
            "asking GitLab to resend",
        )
        .await
        .map(drop)
    }
}

/// Failed push and tag push events, one per delivery id (its newest event; the list is newest
/// first), oldest first.
fn failed_pushes(events: Vec<Event>) -> Vec<FailedDelivery> {
    let mut seen = std::collections::HashSet::new();
    let mut failed: Vec<FailedDelivery> = events
        .into_iter()
        .filter(|event| matches!(event.trigger.as_str(), "push_hooks" | "tag_push_hooks"))
        .filter_map(|event| {
            let delivery_id = event.delivery_id()?;
            seen.insert(delivery_id.clone()).then_some(FailedDelivery {
                delivery_id,
                attempt: event.id,
            })
        })
        .collect();
    failed.reverse();
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, trigger: &str, key: Option<&str>) -> Event {
        let mut request_headers = BTreeMap::new();
        if let Some(key) = key {
            request_headers.insert("Idempotency-Key".into(), key.into());
        }
        request_headers.insert("X-Gitlab-Event-UUID".into(), format!("uuid-{id}").into());
        Event {
            id,
            trigger: trigger.into(),
            request_headers,
        }
    }

    #[test]
    fn failed_push_events_are_known_by_their_idempotency_key_once_oldest_first() {
        let failed = failed_pushes(vec![
            event(30, "push_hooks", Some("key-b")),
            event(20, "merge_request_hooks", Some("key-mr")),
            event(12, "tag_push_hooks", Some("key-a")),
            event(11, "push_hooks", Some("key-b")),
            event(10, "push_hooks", None),
        ]);
        let ids: Vec<(&str, u64)> = failed
            .iter()
            .map(|f| (f.delivery_id.as_str(), f.attempt))
            .collect();
        assert_eq!(ids, [("uuid-10", 10), ("key-a", 12), ("key-b", 30)]);
    }
}
