//! Process wiring: build the application from [`Settings`], expose the bound port, run until
//! stopped. Tests build it on port 0 and read the port back.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;

use crate::config::Settings;
use crate::intake::{self, BodyBudget, IntakeState};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::web as ops;

pub struct Application {
    port: u16,
    server: Server,
    store_writer: JoinHandle<()>,
}

impl Application {
    /// Opens the store and binds the listener; nothing is served until [`run_until_stopped`].
    pub fn build(settings: Settings) -> anyhow::Result<Application> {
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
        let shutdown_timeout = settings.server.shutdown_timeout.as_secs();
        let max_body = settings.server.max_body_bytes;
        let bodies = BodyBudget::new(settings.server.max_inflight_body_bytes);
        let state = web::Data::new(IntakeState {
            bodies,
            settings: Arc::new(settings),
            store,
            metrics,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .route("/hooks/{project}", web::post().to(intake::receive))
                .route("/healthz", web::get().to(ops::healthz))
                .route("/readyz", web::get().to(ops::readyz))
                .route("/metrics", web::get().to(ops::metrics))
                .default_service(web::to(not_found))
        })
        .shutdown_timeout(shutdown_timeout)
        .listen(listener)?
        .run();
        Ok(Application {
            port,
            server,
            store_writer,
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
        // The server's workers held the last store handles; with them gone the writer drains
        // its queue and ends.
        let writer = self.store_writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
        Ok(())
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "no such route" }))
}
