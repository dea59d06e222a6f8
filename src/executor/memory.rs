//! An [`Executor`] in memory, for testing the worker on any machine: steps follow a script
//! (exit code, output, how long they take, files they leave), images are content-addressed by
//! their context tar, and a push gives the same digest for the same image, as a registry does.
//! Time is tokio's, so a test can pause it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{BuildSpec, ExecError, Executor, LogSink, PushSpec, StepSpec};

/// What a step whose commands contain `matches` does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub matches: String,
    pub exit: i64,
    pub output: Vec<String>,
    pub takes: Duration,
    /// Files (relative to the step's working directory) the step writes.
    pub writes: Vec<String>,
}

/// What happened, in order, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Step { service: String, command: String },
    StepStopped { service: String, why: String },
    StepDone { service: String, exit: i64 },
    Built { tag: String, image: String },
    Pushed { reference: String, digest: String },
    Tagged { image: String, reference: String },
}

#[derive(Default)]
struct State {
    scripts: Vec<Script>,
    /// reference → image id (the engine's local tags).
    images: BTreeMap<String, String>,
    events: Vec<Event>,
    /// Base and toolchain images that exist (by reference), with their ids.
    present: BTreeMap<String, String>,
    running: HashSet<String>,
}

#[derive(Default)]
pub struct MemoryExecutor {
    state: Mutex<State>,
}

impl MemoryExecutor {
    /// An engine that has these images (toolchains, bases), each with an id of its own.
    pub fn with_images(references: &[&str]) -> MemoryExecutor {
        let executor = MemoryExecutor::default();
        for reference in references {
            executor.replace_image(reference, &format!("sha256:{}", hex_of(reference)));
        }
        executor
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Steps whose commands contain `script.matches` follow it (the first match wins).
    pub fn script(&self, script: Script) {
        self.state().scripts.push(script);
    }

    /// Points `reference` at another image id (a base image rebuilt under the same name).
    pub fn replace_image(&self, reference: &str, id: &str) {
        self.state()
            .present
            .insert(reference.to_owned(), id.to_owned());
    }

    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Steps running now, by service.
    pub fn running(&self) -> HashSet<String> {
        self.state().running.clone()
    }

    fn script_for(&self, commands: &[String]) -> Script {
        let joined = commands.join("\n");
        self.state()
            .scripts
            .iter()
            .find(|s| joined.contains(&s.matches))
            .cloned()
            .unwrap_or_default()
    }
}

fn hex_of(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Executor for MemoryExecutor {
    async fn run_step(
        &self,
        spec: &StepSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<i64, ExecError> {
        if !self.state().present.contains_key(&spec.image) {
            return Err(ExecError::MissingImage {
                image: spec.image.clone(),
            });
        }
        let script = self.script_for(&spec.commands);
        {
            let mut state = self.state();
            state.running.insert(spec.service.clone());
            state.events.push(Event::Step {
                service: spec.service.clone(),
                command: spec.commands.join(" && "),
            });
        }
        for command in &spec.commands {
            log.line(&format!("$ {command}"));
        }
        let stopped = tokio::select! {
            () = tokio::time::sleep(script.takes) => None,
            () = cancel.cancelled() => Some(ExecError::Canceled),
            () = tokio::time::sleep(spec.timeout) => Some(ExecError::TimedOut(spec.timeout.as_secs())),
        };
        let mut state = self.state();
        state.running.remove(&spec.service);
        if let Some(error) = stopped {
            state.events.push(Event::StepStopped {
                service: spec.service.clone(),
                why: error.to_string(),
            });
            return Err(error);
        }
        state.events.push(Event::StepDone {
            service: spec.service.clone(),
            exit: script.exit,
        });
        drop(state);
        for line in &script.output {
            log.line(line);
        }
        for file in &script.writes {
            let path = spec.workspace.join(&spec.workdir).join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ExecError::Engine(e.to_string()))?;
            }
            std::fs::write(&path, file).map_err(|e| ExecError::Engine(e.to_string()))?;
        }
        Ok(script.exit)
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        log: &dyn LogSink,
        _cancel: &CancellationToken,
    ) -> Result<String, ExecError> {
        let context = std::fs::read(&spec.context_tar).map_err(|e| ExecError::Context {
            path: spec.context_tar.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut hasher = Sha256::new();
        hasher.update(&context);
        // The image depends on its bases, as a real build does.
        for (reference, id) in &self.state().present {
            hasher.update(format!("{reference}={id}\n"));
        }
        let id = format!("sha256:{}", hex::encode(hasher.finalize()));
        log.line(&format!("Successfully built {}", &id[7..19]));
        let mut state = self.state();
        state.images.insert(spec.tag.clone(), id.clone());
        state.events.push(Event::Built {
            tag: spec.tag.clone(),
            image: id.clone(),
        });
        Ok(id)
    }

    async fn push_image(
        &self,
        spec: &PushSpec<'_>,
        _log: &dyn LogSink,
    ) -> Result<String, ExecError> {
        let reference = spec.reference;
        let mut state = self.state();
        let image = state
            .images
            .get(reference)
            .cloned()
            .ok_or_else(|| ExecError::Push {
                reference: reference.to_owned(),
                reason: "no such local image".into(),
            })?;
        // The same image pushes as the same manifest, whatever its tag.
        let digest = format!("sha256:{}", hex_of(&image));
        state.events.push(Event::Pushed {
            reference: reference.to_owned(),
            digest: digest.clone(),
        });
        Ok(digest)
    }

    async fn pin(&self, reference: &str) -> Result<Option<String>, ExecError> {
        self.image_id(reference).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, ExecError> {
        let state = self.state();
        let id = state
            .present
            .get(reference)
            .or_else(|| state.images.get(reference))
            .cloned()
            .or_else(|| {
                // An image id names itself, as the engine's does.
                state
                    .images
                    .values()
                    .find(|id| id.as_str() == reference)
                    .cloned()
            });
        Ok(id)
    }

    async fn tag(&self, image: &str, reference: &str) -> Result<(), ExecError> {
        let mut state = self.state();
        state.images.insert(reference.to_owned(), image.to_owned());
        state.events.push(Event::Tagged {
            image: image.to_owned(),
            reference: reference.to_owned(),
        });
        Ok(())
    }

    async fn remove_containers(&self, _job: Option<i64>) -> Result<usize, ExecError> {
        Ok(0)
    }
}
