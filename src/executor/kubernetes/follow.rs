//! Following one container of a build pod: wait until it starts (or say why it cannot), stream
//! its output into the job log as it comes, and return how it ended.

use std::time::Duration;

use futures_util::AsyncReadExt;
use k8s_openapi::api::core::v1::{ContainerState, Pod};
use kube::api::LogParams;
use kube::Api;

use super::super::lines::LineSplitter;
use super::super::{ExecError, LogSink};

/// How often the pod's status is read while a container has not started or not ended.
const POLL: Duration = Duration::from_millis(250);

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

/// Streams the output of a started container until it ends; how it ended.
pub(super) async fn to_the_end(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    log: &dyn LogSink,
) -> Result<Ended, ExecError> {
    stream_logs(pods, pod, container, log).await?;
    loop {
        if let Some(ended) = ended(pods, pod, container).await? {
            return Ok(ended);
        }
        tokio::time::sleep(POLL).await;
    }
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

/// The container's output, from its start until it ends.
async fn stream_logs(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    log: &dyn LogSink,
) -> Result<(), ExecError> {
    let params = LogParams {
        container: Some(container.to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let mut stream = pods
        .log_stream(pod, &params)
        .await
        .map_err(|e| pod_error(pod, e))?;
    let mut splitter = LineSplitter::default();
    let mut chunk = vec![0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => splitter.push(&chunk[..n], log),
            Err(e) => {
                splitter.finish(log);
                return Err(ExecError::Engine(format!(
                    "build pod {pod}: the log of {container} broke off: {e}"
                )));
            }
        }
    }
    splitter.finish(log);
    Ok(())
}

async fn ended(pods: &Api<Pod>, pod: &str, container: &str) -> Result<Option<Ended>, ExecError> {
    let (state, _) = state(pods, pod, container).await?;
    Ok(state.and_then(|s| s.terminated).map(|t| Ended {
        exit_code: i64::from(t.exit_code),
        message: t.message.unwrap_or_default().trim().to_owned(),
    }))
}
