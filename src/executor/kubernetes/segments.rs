//! What deploybot holds of each service's build pod while it runs: its name and nonce, which
//! container runs each segment (see `containers.rs`), and the reader of the container it is
//! following, kept open from one segment to the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::super::{ExecError, LogSink};
use super::containers::{marker, segment_name, Layout, Marker, Segment};
use super::follow::{self, Reader};

/// How a segment ended.
pub(super) struct End {
    pub(super) code: i64,
    /// The image id or digest it handed back, or why it failed.
    pub(super) result: String,
}

pub(super) struct Build {
    name: String,
    nonce: String,
    layout: Layout,
    reader: Option<Reader>,
}

impl Build {
    pub(super) fn new(name: String, nonce: String, layout: Layout) -> Build {
        Build {
            name,
            nonce,
            layout,
            reader: None,
        }
    }

    /// Follows `segment`: waits for its container to start (not counted in `timeout`), streams
    /// its output into `log` until its marker, and, for its container's last segment or a
    /// failure, checks the marker against how the container really ended, unless the caller
    /// checks a success itself (`checked`: the push, whose digest the registry confirms).
    pub(super) async fn follow(
        &mut self,
        pods: &Api<Pod>,
        segment: &Segment,
        (start_timeout, timeout): (Duration, Duration),
        checked: bool,
        log: &dyn LogSink,
    ) -> Result<End, ExecError> {
        let place = self.layout.place(segment).cloned().ok_or_else(|| {
            ExecError::Engine(format!(
                "build pod {} has no {}",
                self.name,
                segment_name(segment)
            ))
        })?;
        let (name, nonce) = (self.name.clone(), self.nonce.clone());
        let mut reader = match self.reader.take() {
            Some(reader) if reader.container == place.container => reader,
            _ => {
                follow::started(pods, &name, &place.container, start_timeout).await?;
                Reader::open(pods, &name, &place.container).await?
            }
        };
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        let timed_out = || ExecError::TimedOut(timeout.as_secs());
        let wanted = segment_name(segment);
        let found =
            tokio::time::timeout_at(deadline, until_marker(&mut reader, &nonce, &wanted, log))
                .await
                .map_err(|_| timed_out())??;
        if let Some(Marker {
            code: 0, result, ..
        }) = &found
        {
            if !place.last || checked {
                self.reader = Some(reader);
                return Ok(End {
                    code: 0,
                    result: result.clone(),
                });
            }
        }
        // The container's last segment, a failure, or no marker at all: the rest of its output,
        // then how it really ended (its exit code and termination message decide).
        let ended = tokio::time::timeout_at(deadline, async {
            until_marker(&mut reader, &nonce, "", log).await?;
            follow::ended(pods, &name, &place.container).await
        })
        .await
        .map_err(|_| timed_out())??;
        let result = match found {
            Some(m) if ended.exit_code != 0 && m.code == ended.exit_code => m.result,
            _ => ended.message,
        };
        Ok(End {
            code: ended.exit_code,
            result,
        })
    }
}

/// Output lines into `log` until the marker of segment `wanted` (which is returned), or the end
/// of the output (None). Markers of other segments, stale or imitated, are not shown.
async fn until_marker(
    reader: &mut Reader,
    nonce: &str,
    wanted: &str,
    log: &dyn LogSink,
) -> Result<Option<Marker>, ExecError> {
    while let Some(line) = reader.next_line().await? {
        match marker(&line, nonce) {
            Some(m) if m.segment == wanted => return Ok(Some(m)),
            Some(_) => {}
            None => log.line(&line),
        }
    }
    Ok(None)
}

/// One build, followed by one call at a time.
type Shared = Arc<tokio::sync::Mutex<Build>>;

/// The builds this deploybot follows, by job and service.
#[derive(Default)]
pub(super) struct Builds(Mutex<HashMap<(i64, String), Shared>>);

impl Builds {
    pub(super) fn insert(&self, job: i64, service: &str, build: Build) {
        if let Ok(mut builds) = self.0.lock() {
            let build = Arc::new(tokio::sync::Mutex::new(build));
            builds.insert((job, service.to_owned()), build);
        }
    }

    pub(super) fn get(&self, job: i64, service: &str) -> Option<Shared> {
        let builds = self.0.lock().ok()?;
        builds.get(&(job, service.to_owned())).cloned()
    }

    /// Forgets the builds of `job`, or all of them.
    pub(super) fn forget(&self, job: Option<i64>) {
        if let Ok(mut builds) = self.0.lock() {
            builds.retain(|(j, _), _| job.is_some_and(|job| job != *j));
        }
    }
}
