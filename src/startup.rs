//! Process wiring: build the application from [`Settings`], expose the bound port, run until
//! stopped. Tests build it on port 0 and read the port back.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ExecutorSettings;
use crate::config::Settings;
use crate::executor::{DockerEngine, KubeExecutor};
use crate::intake::{self, BodyBudget, IntakeState, RejectionBudget};
use crate::metrics::Metrics;
use crate::recovery::Recovery;
use crate::registry::RegistryClient;
use crate::report::sender::Sender;
use crate::retention::Retention;
use crate::store::Store;
use crate::store::{Jobs, Outbox};
use crate::web as ops;
use crate::worker::Worker;

pub struct Application {
    port: u16,
    server: Server,
    store_writer: JoinHandle<()>,
    worker: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    sender: (tokio::task::JoinHandle<()>, CancellationToken),
    retention: Retention,
    recovery: Option<Recovery>,
}

impl Application {
    /// Opens the store, binds the listener and (when `worker.enabled`) starts the worker on
    /// the Docker engine; nothing is served until [`run_until_stopped`]. Without a reachable
    /// engine the worker stays off (logged): deliveries are still recorded and their jobs
    /// wait in the queue.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let metrics = Arc::new(Metrics::new().context("setting up metrics")?);
        let (store, store_writer) = Store::open(
            &settings.server.data_dir,
            settings.server.max_commit_batch,
            metrics.writer.clone(),
        )
        .context("opening the store")?;
        let listener = TcpListener::bind(settings.server.listen)
            .with_context(|| format!("server.listen: cannot bind {}", settings.server.listen))?;
        let port = listener.local_addr()?.port();
        let settings = Arc::new(settings);
        let wake = Arc::new(Notify::new());
        let reports = Arc::new(Notify::new());
        let outbox =
            Arc::new(Outbox::open(&settings.server.data_dir).context("opening the outbox")?);
        let sender_stop = CancellationToken::new();
        let sender = tokio::spawn(
            Sender::new(&settings, outbox, reports.clone(), metrics.clone())
                .run(sender_stop.clone()),
        );
        // One deployer for the worker and the rollback action: rollouts of one Deployment
        // never interleave, whoever asked for them.
        let deploy_jobs =
            Arc::new(Jobs::open(&settings.server.data_dir, "deploy").context("opening the store")?);
        let deployer = Arc::new(crate::deploy::connect(&settings, deploy_jobs).await);
        let rollbacks = web::Data::new(ops::Rollbacks {
            deployer: deployer.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
        });
        let worker = if settings.worker.enabled {
            start_worker(
                settings.clone(),
                wake.clone(),
                reports.clone(),
                metrics.clone(),
                deployer,
            )
            .await
        } else {
            None
        };
        let retention = (
            settings.retention.clone(),
            settings.server.data_dir.clone(),
            store.clone(),
            metrics.clone(),
        );
        let recovery = (
            settings.clone(),
            store.clone(),
            wake.clone(),
            reports.clone(),
            metrics.clone(),
        );
        let state = web::Data::new(IntakeState {
            bodies: BodyBudget::new(settings.server.max_inflight_body_bytes),
            rejections: RejectionBudget::new(
                settings.server.rejections_per_source,
                settings.server.rejections_window,
            ),
            wake,
            reports,
            jobs: Arc::new(
                Jobs::open(&settings.server.data_dir, "intake").context("opening the store")?,
            ),
            settings,
            store,
            metrics,
        });
        let views = views(&state)?;
        let server = serve(listener, state, views, rollbacks)?;
        // Started last: nothing after it can fail and leave it holding the store open.
        let (retention, data_dir, store, metrics) = retention;
        let retention = Retention::start(retention, &data_dir, store, metrics)
            .context("opening the store for retention")?;
        // After the server is bound: a redelivery the forge sends must find it listening.
        let (settings, store, wake, reports, metrics) = recovery;
        let recovery = Recovery::start(settings, store, wake, reports, metrics)
            .context("opening the store for recovery")?;
        Ok(Application {
            port,
            server,
            store_writer,
            worker,
            sender: (sender, sender_stop),
            retention,
            recovery,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server gracefully (what SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or [`handle`]`.stop`): stops accepting, lets in-flight
    /// requests finish, then waits for the store writer to commit its last batch.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        // Before the writer is joined: the task holds a store handle.
        self.retention.stop().await;
        if let Some(recovery) = self.recovery {
            recovery.stop().await;
        }
        if let Some((worker, stop)) = self.worker {
            // Running jobs stop at their next safe point and are resumed by the next start.
            stop.cancel();
            if tokio::time::timeout(std::time::Duration::from_secs(20), worker)
                .await
                .is_err()
            {
                tracing::warn!("The worker did not stop within 20 s");
            }
        }
        // Undelivered reports stay in the outbox for the next start.
        let (sender, stop) = self.sender;
        stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sender).await;
        // The server's workers held the last store handles; with them gone the writer drains
        // its queue and ends.
        let writer = self.store_writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
        Ok(())
    }
}

/// What the pages, the API and the actions read through.
fn views(state: &web::Data<IntakeState>) -> anyhow::Result<web::Data<Arc<ops::Views>>> {
    let data_dir = &state.settings.server.data_dir;
    Ok(web::Data::new(Arc::new(ops::Views {
        jobs: Arc::new(Jobs::open(data_dir, "web").context("opening the store for reading")?),
        reader: std::sync::Mutex::new(
            state
                .store
                .reader()
                .context("opening the store for reading")?,
        ),
        followers: state.metrics.log_followers.clone(),
    })))
}

/// The HTTP server on `listener`: intake, the operations endpoints, the pages, the API and
/// the actions.
fn serve(
    listener: TcpListener,
    state: web::Data<IntakeState>,
    views: web::Data<Arc<ops::Views>>,
    rollbacks: web::Data<ops::Rollbacks>,
) -> anyhow::Result<actix_web::dev::Server> {
    let shutdown_timeout = state.settings.server.shutdown_timeout.as_secs();
    let max_body = state.settings.server.max_body_bytes;
    let action_token = web::Data::new(ops::ActionToken(state.settings.action_token.clone()));
    let worker_wake = web::Data::new(state.wake.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(views.clone())
            .app_data(action_token.clone())
            .app_data(worker_wake.clone())
            .app_data(rollbacks.clone())
            .configure(ops::routes)
            .app_data(web::PayloadConfig::new(max_body))
            .route("/hooks/{project}", web::post().to(intake::receive))
            .route("/healthz", web::get().to(ops::healthz))
            .route("/readyz", web::get().to(ops::readyz))
            .route("/metrics", web::get().to(ops::metrics))
            .default_service(web::to(not_found))
    })
    .shutdown_timeout(shutdown_timeout)
    // A client that closes its side is gone: drop its request and its response at once.
    // Allowed half-closure would keep a live-log stream (and its follower task) running for
    // a reader that left, until the next write fails. Forges do not half-close.
    .h1_allow_half_closed(false)
    .listen(listener)?
    .run();
    Ok(server)
}

async fn start_worker(
    settings: Arc<Settings>,
    wake: Arc<Notify>,
    reports: Arc<Notify>,
    metrics: Arc<Metrics>,
    deployer: Arc<crate::deploy::Deployer<crate::deploy::KubeCluster>>,
) -> Option<(tokio::task::JoinHandle<()>, CancellationToken)> {
    // One deploybot per store: its containers are labelled with a digest of the store's path.
    let instance = crate::executor::instance_id(&settings.server.data_dir);
    let owner = format!(
        "{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    let jobs = match Jobs::open(&settings.server.data_dir, &owner) {
        Ok(jobs) => Arc::new(jobs),
        Err(e) => {
            tracing::error!(error = %e, "Worker not started: cannot open the job store");
            return None;
        }
    };
    let stop = CancellationToken::new();
    let parts = (settings.clone(), jobs, wake, reports, metrics, deployer);
    let handle = match &settings.executor {
        ExecutorSettings::Docker => {
            let engine = match DockerEngine::connect(&instance).await {
                Ok(engine) => engine,
                Err(e) => {
                    tracing::error!(error = %e, "Worker not started: jobs stay queued until the engine is reachable and deploybot restarts");
                    return None;
                }
            };
            spawn_worker(parts, engine, stop.clone())
        }
        ExecutorSettings::Kubernetes(kubernetes) => {
            let registry = settings.registry.as_ref().and_then(|r| {
                let client = RegistryClient::new(r, std::time::Duration::from_secs(30)).ok()?;
                Some((r.address.clone(), client))
            });
            let executor = match KubeExecutor::connect((**kubernetes).clone(), &instance, registry)
                .await
            {
                Ok(executor) => executor,
                Err(e) => {
                    tracing::error!(error = %e, "Worker not started: the build cluster's configuration is unusable");
                    return None;
                }
            };
            spawn_worker(parts, executor, stop.clone())
        }
    };
    Some((handle, stop))
}

type WorkerParts = (
    Arc<Settings>,
    Arc<Jobs>,
    Arc<Notify>,
    Arc<Notify>,
    Arc<Metrics>,
    Arc<crate::deploy::Deployer<crate::deploy::KubeCluster>>,
);

fn spawn_worker<E: crate::executor::Executor>(
    (settings, jobs, wake, reports, metrics, deployer): WorkerParts,
    executor: E,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let worker = Worker::new(
        settings,
        jobs,
        Arc::new(executor),
        wake,
        reports,
        metrics,
        deployer,
    );
    tokio::spawn(worker.run(stop))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "no such route" }))
}
