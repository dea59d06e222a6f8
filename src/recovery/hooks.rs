//! Recovery through a forge's record of its webhook's deliveries: list the deliveries that
//! failed, and ask the forge to send again each push deploybot has not recorded, so that it
//! arrives through the normal signed path. Each forge is one [`DeliveryLog`].

use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::config::RecoverySettings;
use crate::metrics::Metrics;
use crate::store::RecoveryLedger;

/// A failed delivery of a push, as its forge's log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    /// The id deploybot records the delivery under once it arrives (GitHub's GUID, GitLab's
    /// `Idempotency-Key`), which a redelivery keeps.
    pub delivery_id: String,
    /// The forge's id of the attempt to send again.
    pub attempt: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The forge cannot do this here (no such hook, no permission, an API too old): recovery
    /// compares refs instead.
    #[error("{0}")]
    Unavailable(String),
    /// Asked to wait: the rest waits for the next run.
    #[error("rate limited for {} s", .0.as_secs())]
    RateLimited(Duration),
    #[error("{0}")]
    Failed(String),
}

impl LogError {
    /// The error an answer with `code` means; `what` names the call.
    pub fn from_status(code: u16, headers: &HeaderMap, what: &str) -> LogError {
        let wait = || {
            crate::report::retry_after(headers)
                .or_else(|| github_reset(headers))
                .unwrap_or(Duration::from_secs(60))
        };
        match code {
            429 => LogError::RateLimited(wait()),
            403 if github_reset(headers).is_some() => LogError::RateLimited(wait()),
            401 | 403 | 404 | 405 | 410 => LogError::Unavailable(format!("{what}: HTTP {code}")),
            _ => LogError::Failed(format!("{what}: HTTP {code}")),
        }
    }
}

/// GitHub's primary rate limit: `x-ratelimit-remaining: 0` until `x-ratelimit-reset`.
fn github_reset(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.parse::<u64>().ok();
    if header("x-ratelimit-remaining")? != 0 {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(
        header("x-ratelimit-reset")?.saturating_sub(now).max(1),
    ))
}

/// One forge's delivery log for one hook.
pub trait DeliveryLog {
    /// `github_redelivery`, `gitlab_resend`: the metric's `how`.
    const HOW: &'static str;

    /// Failed push deliveries with no successful attempt, at most `max_pages` pages back.
    async fn failed_pushes(&self, max_pages: u32) -> Result<Vec<FailedDelivery>, LogError>;

    /// Asks the forge to send `delivery` again.
    async fn redeliver(&self, delivery: &FailedDelivery) -> Result<(), LogError>;
}

/// Asks for each failed push the project has not recorded, within the run's bounds; returns
/// how many were asked for.
pub async fn redeliver_missing<L: DeliveryLog>(
    log: &L,
    project: &str,
    ledger: &std::sync::Arc<RecoveryLedger>,
    limits: &RecoverySettings,
    metrics: &Metrics,
) -> Result<u32, LogError> {
    let failed = log.failed_pushes(limits.max_pages).await?;
    let ids: Vec<String> = failed.iter().map(|f| f.delivery_id.clone()).collect();
    let recorded = blocking(ledger, {
        let project = project.to_owned();
        move |ledger| ledger.recorded_deliveries(&project, &ids)
    })
    .await?;
    let mut asked = 0;
    for delivery in failed.iter().filter(|f| !recorded.contains(&f.delivery_id)) {
        if asked >= limits.max_redeliveries {
            tracing::info!(
                project,
                "Recovery: more missed deliveries wait for the next run"
            );
            break;
        }
        let asks = blocking(ledger, {
            let (project, id) = (project.to_owned(), delivery.delivery_id.clone());
            move |ledger| ledger.redelivery_asks(&project, &id)
        })
        .await?;
        if asks >= limits.max_asks {
            continue;
        }
        blocking(ledger, {
            let (project, id) = (project.to_owned(), delivery.delivery_id.clone());
            move |ledger| ledger.note_redelivery_ask(&project, &id)
        })
        .await?;
        log.redeliver(delivery).await?;
        metrics
            .recovered
            .with_label_values(&[project, L::HOW])
            .inc();
        tracing::info!(
            project,
            delivery_id = %delivery.delivery_id,
            how = L::HOW,
            "Recovery: asked the forge to send a missed push again"
        );
        asked += 1;
    }
    Ok(asked)
}

async fn blocking<T: Send + 'static>(
    ledger: &std::sync::Arc<RecoveryLedger>,
    f: impl FnOnce(&RecoveryLedger) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, LogError> {
    super::on_ledger(ledger, f).await.map_err(LogError::Failed)
}

/// Sends `request`: a 2xx answer, or the error its status means; `what` names the call.
pub async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<reqwest::Response, LogError> {
    let response = request
        .send()
        .await
        .map_err(|e| LogError::Failed(format!("{what}: {}", e.without_url())))?;
    match response.status().as_u16() {
        200..=299 => Ok(response),
        code => Err(LogError::from_status(code, response.headers(), what)),
    }
}

/// An API reply's JSON, read up to `limit` bytes (a forge's reply is untrusted too).
pub async fn bounded_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<T, LogError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| LogError::Failed(format!("{what}: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > limit {
            return Err(LogError::Failed(format!(
                "{what}: the reply is over {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| LogError::Failed(format!("{what}: unexpected reply ({e})")))
}

/// How long one page of a delivery log may be.
pub const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;
