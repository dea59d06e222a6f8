//! Following a build pod's containers: wait until one starts (or say why it cannot), read its
//! output line by line as it comes (a [`Reader`] stays open across the segments it runs), and
//! read how it ended.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{AsyncRead, AsyncReadExt};
use k8s_openapi::api::core::v1::{ContainerState, Pod};
use kube::api::LogParams;
use kube::Api;

use super::super::lines::LineSplitter;
use super::super::{ExecError, LogSink};

/// How often the pod's status is read while a container has not started or not ended (the
/// kubelet itself notices a container's end within about a second).
const POLL: Duration = Duration::from_millis(100);

/// Waiting reasons that will not resolve by themselves.
const STUCK: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How a container ended.
pub(super) struct Ended {
    pub(super) exit_code: i64,
    /// Its termination message (`/dev/termination-log`), trimmed.
    pub(super) message: String,
}

fn pod_error(pod: &str, e: kube::Error) -> ExecError {
    ExecError::Engine(format!("build pod {pod}: {e}"))
}

/// The state of `container` in the pod, and the pod itself.
async fn state(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
) -> Result<(Option<ContainerState>, Pod), ExecError> {
    let found = pods.get(pod).await.map_err(|e| pod_error(pod, e))?;
    let status = found.status.as_ref();
    let state = status
        .into_iter()
        .flat_map(|s| {
            let init = s.init_container_statuses.iter().flatten();
            init.chain(s.container_statuses.iter().flatten())
        })
        .find(|c| c.name == container)
        .and_then(|c| c.state.clone());
    Ok((state, found))
}

/// Returns once the container runs or ran; fails when it cannot start, saying why.
pub(super) async fn started(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    start_timeout: Duration,
) -> Result<(), ExecError> {
    let deadline = tokio::time::Instant::now() + start_timeout;
    loop {
        let (state, found) = state(pods, pod, container).await?;
        let state = state.unwrap_or_default();
        if state.running.is_some() || state.terminated.is_some() {
            return Ok(());
        }
        if let Some(waiting) = state.waiting {
            let reason = waiting.reason.unwrap_or_default();
            if STUCK.contains(&reason.as_str()) {
                let message = waiting.message.unwrap_or_default();
                return Err(ExecError::Engine(format!(
                    "container {container} cannot start: {reason}: {message}"
                )));
            }
        }
        let status = found.status.unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
            let why = status.message.or(status.reason).unwrap_or_default();
            return Err(ExecError::Engine(format!(
                "build pod {pod} ended before {container} ran {why}"
            )));
        }
        if tokio::time::Instant::now() > deadline {
            let unscheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone());
            return Err(ExecError::Engine(match unscheduled {
                Some(why) => format!("build pod {pod} was not scheduled: {why}"),
                None => format!(
                    "container {container} did not start within {} s",
                    start_timeout.as_secs()
                ),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How the container ended, once it has.
pub(super) async fn ended(pods: &Api<Pod>, pod: &str, container: &str) -> Result<Ended, ExecError> {
    loop {
        let (state, _) = state(pods, pod, container).await?;
        if let Some(t) = state.and_then(|s| s.terminated) {
            return Ok(Ended {
                exit_code: i64::from(t.exit_code),
                message: t.message.unwrap_or_default().trim().to_owned(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One container's output, line by line (cut at 16 KiB as the Docker executor cuts them).
pub(super) struct Reader {
    pub(super) container: String,
    stream: Pin<Box<dyn AsyncRead + Send>>,
    splitter: LineSplitter,
    lines: VecDeque<String>,
    done: bool,
}

/// Collects the lines a [`LineSplitter`] hands out.
#[derive(Default)]
struct Collect(Mutex<Vec<String>>);

impl LogSink for Collect {
    fn line(&self, text: &str) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(text.to_owned());
        }
    }
}

impl Reader {
    /// Follows the output of `container`, which has started, from its beginning.
    pub(super) async fn open(
        pods: &Api<Pod>,
        pod: &str,
        container: &str,
    ) -> Result<Reader, ExecError> {
        let params = LogParams {
            container: Some(container.to_owned()),
            follow: true,
            ..LogParams::default()
        };
        let stream = pods
            .log_stream(pod, &params)
            .await
            .map_err(|e| pod_error(pod, e))?;
        Ok(Reader {
            container: container.to_owned(),
            stream: Box::pin(stream),
            splitter: LineSplitter::default(),
            lines: VecDeque::new(),
            done: false,
        })
    }

    /// The next line, or None once the container's output has ended.
    pub(super) async fn next_line(&mut self) -> Result<Option<String>, ExecError> {
        let mut chunk = vec![0u8; 8192];
        while self.lines.is_empty() && !self.done {
            let collect = Collect::default();
            match self.stream.read(&mut chunk).await {
                Ok(0) => {
                    self.splitter.finish(&collect);
                    self.done = true;
                }
                Ok(n) => self.splitter.push(&chunk[..n], &collect),
                Err(e) => {
                    return Err(ExecError::Engine(format!(
                        "the log of {} broke off: {e}",
                        self.container
                    )))
                }
            }
            self.lines
                .extend(collect.0.into_inner().unwrap_or_default());
        }
        Ok(self.lines.pop_front())
    }
}
