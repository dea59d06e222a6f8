//! The command line: `serve`, `check-config`, `deliveries`. Each subcommand loads the same
//! configuration (`--config PATH`, else `config/deploybot.toml` if present, else the embedded
//! defaults) and returns an exit code; `main` only prints errors.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};
use crate::startup::Application;
use crate::store::{Jobs, Reader};

#[derive(Debug, Parser)]
#[command(
    name = "deploybot",
    version,
    about = "Turns a signed git push or tag into running software"
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, config/deploybot.toml is used if it exists,
    /// else the embedded defaults. DEPLOYBOT__SECTION__KEY variables override any key.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: the webhook intake (POST /hooks/{project}), /healthz, /readyz and
    /// /metrics. SIGTERM stops accepting, finishes in-flight requests and exits 0.
    Serve,
    /// Check the configuration: exit 0 if it is usable, else print one line per problem,
    /// naming the field, and exit 2.
    CheckConfig,
    /// List recorded webhook deliveries, newest first: delivery id, forge, event, repository,
    /// ref, sha, outcome (queued, ignored, pong, rejected) and when it was received.
    Deliveries {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List build jobs, newest first: id, project, ref, sha, state, attempt, timings.
    Jobs {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job: its state per service and stage (with exit codes and the failure's
    /// last log lines) and the images it built or pushed, with digests.
    Job {
        /// The job id (from `deploybot jobs` or the webhook's answer).
        id: i64,
    },
    /// Roll a service back by hand: to the image that ran before the current one, or to the
    /// image deployed at --to TAG. Recorded, and waited for, like any rollout.
    Rollback {
        /// The project (as in the configuration).
        project: String,
        /// The service (as in the repository's .deploybot.toml).
        service: String,
        /// A tag deployed before (default: what ran before the current image).
        #[arg(long, value_name = "TAG")]
        to: Option<String>,
        /// The environment (default: the one the service last rolled out to).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Print a job's build log (secrets already masked); --follow keeps printing until the
    /// job ends.
    Logs {
        /// The job id.
        job: i64,
        /// Only this service's log.
        #[arg(long)]
        service: Option<String>,
        /// Keep following the log while the job runs.
        #[arg(long)]
        follow: bool,
    },
}

/// Exit code for a configuration that cannot be used.
pub const EXIT_BAD_CONFIG: i32 = 2;

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // Reading commands need only the store's location, not the projects' secrets.
    if !matches!(
        cli.command,
        Command::Serve | Command::CheckConfig | Command::Rollback { .. }
    ) {
        let server = match Settings::load_server(cli.config.as_deref()) {
            Ok(server) => server,
            Err(error) => return Ok(report_config_error(&error)),
        };
        return read_command(cli.command, &server.data_dir);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return Ok(report_config_error(&error)),
    };
    match cli.command {
        Command::CheckConfig => {
            let names: Vec<String> = settings
                .projects
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            println!(
                "configuration is valid: listen {}, data_dir {}, {} project(s){}{}",
                settings.server.listen,
                settings.server.data_dir.display(),
                names.len(),
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
            );
            Ok(0)
        }
        Command::Serve => serve(settings),
        Command::Rollback {
            project,
            service,
            to,
            environment,
        } => rollback(
            settings,
            crate::deploy::RollbackAsk {
                project,
                service,
                environment,
                to,
            },
        ),
        other => read_command(other, &settings.server.data_dir),
    }
}

fn read_command(command: Command, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    match command {
        Command::Deliveries { limit, json } => list_deliveries(data_dir, limit, json),
        Command::Jobs { limit } => {
            let jobs = Jobs::open(data_dir, "cli")?;
            print!("{}", jobs_table(&jobs.list(limit)?));
            Ok(0)
        }
        Command::Job { id } => {
            let jobs = Jobs::open(data_dir, "cli")?;
            match jobs.get(id)? {
                Some(detail) => {
                    print!("{}", job_report(&detail));
                    Ok(0)
                }
                None => {
                    eprintln!("job {id}: no such job");
                    Ok(1)
                }
            }
        }
        Command::Logs {
            job,
            service,
            follow,
        } => print_logs(data_dir, job, service.as_deref(), follow),
        Command::Serve | Command::CheckConfig | Command::Rollback { .. } => Ok(2),
    }
}

fn print_logs(
    data_dir: &std::path::Path,
    job: i64,
    service: Option<&str>,
    follow: bool,
) -> anyhow::Result<i32> {
    let jobs = Jobs::open(data_dir, "cli")?;
    if jobs.state(job)?.is_none() {
        eprintln!("job {job}: no such job");
        return Ok(1);
    }
    let mut after = 0;
    loop {
        // Read the state first: lines written before the job ended are then all visible.
        let running = jobs
            .state(job)?
            .is_some_and(crate::domain::JobState::is_active);
        for chunk in jobs.logs(job, service, after)? {
            for line in chunk.text.lines() {
                println!("{} {}| {line}", chunk.service, chunk.stage);
            }
            after = chunk.id;
        }
        if !follow || !running {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn jobs_table(rows: &[crate::store::JobRow]) -> String {
    let header = [
        "JOB", "PROJECT", "REF", "SHA", "STATE", "ATTEMPT", "CREATED", "FINISHED",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.project.clone(),
                r.git_ref.clone(),
                r.sha.chars().take(12).collect(),
                r.state.to_string(),
                r.attempt.to_string(),
                r.created_at.clone(),
                r.finished_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&header, &cells, "(no jobs yet)")
}

fn job_report(detail: &crate::store::JobDetail) -> String {
    let job = &detail.job;
    let mut out = format!(
        "job {}  {}  {} @ {}\nstate: {} (attempt {})\n",
        job.id, job.project, job.git_ref, job.sha, job.state, job.attempt
    );
    if let Some(error) = &job.error {
        out.push_str(&format!("error: {error}\n"));
    }
    out.push('\n');
    let cells: Vec<[String; 4]> = detail
        .stages
        .iter()
        .map(|s| {
            [
                s.service.clone(),
                s.stage.to_string(),
                s.state.to_string(),
                s.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            ]
        })
        .collect();
    out.push_str(&table(
        &["SERVICE", "STAGE", "STATE", "EXIT"],
        &cells,
        "(no stages yet)",
    ));
    for stage in detail.stages.iter().filter(|s| s.state == "failed") {
        if let Some(detail) = &stage.detail {
            out.push_str(&format!(
                "\n{} failed at {}:\n{detail}\n",
                stage.service, stage.stage
            ));
        }
    }
    if !detail.images.is_empty() {
        out.push_str("\nimages:\n");
        for image in &detail.images {
            match &image.digest {
                Some(digest) => out.push_str(&format!(
                    "  {}  {}@{digest}\n",
                    image.service, image.reference
                )),
                None => out.push_str(&format!(
                    "  {}  {} (built, not pushed)\n",
                    image.service, image.reference
                )),
            }
        }
    }
    if !detail.deploys.is_empty() {
        out.push_str("\ndeploys:\n");
        for d in &detail.deploys {
            out.push_str(&format!(
                "  {}  {} {}/{}  {}  (was {})\n",
                d.service,
                d.environment,
                d.namespace,
                d.deployment,
                d.state.as_str().replace('_', " "),
                d.previous_image.as_deref().unwrap_or("-")
            ));
            if let Some(reason) = &d.reason {
                out.push_str(&format!("    {reason}\n"));
            }
        }
    }
    out
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(header: &[&str; N], cells: &[[String; N]], empty: &str) -> String {
    let mut widths = header.map(str::len);
    for row in cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in cells {
        line(row);
    }
    if cells.is_empty() {
        out.push_str(empty);
        out.push('\n');
    }
    out
}

fn list_deliveries(data_dir: &std::path::Path, limit: u32, json: bool) -> anyhow::Result<i32> {
    let reader = Reader::open(data_dir)?;
    let rows = reader.deliveries(limit)?;
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(&row)?);
        }
    } else {
        print!("{}", deliveries_table(&rows));
    }
    Ok(0)
}

fn report_config_error(error: &ConfigError) -> i32 {
    for problem in error.problems() {
        eprintln!("{problem}");
    }
    EXIT_BAD_CONFIG
}

fn serve(settings: Settings) -> anyhow::Result<i32> {
    crate::telemetry::init(&settings.log.filter);
    let listen = settings.server.listen;
    let projects = settings.projects.len();
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        tracing::info!(%listen, port = app.port(), projects, "deploybot is listening");
        app.run_until_stopped().await?;
        tracing::info!("deploybot stopped");
        Ok(0)
    })
}

fn deliveries_table(rows: &[crate::store::DeliveryRow]) -> String {
    let header = [
        "DELIVERY",
        "FORGE",
        "EVENT",
        "REPOSITORY",
        "REF",
        "SHA",
        "OUTCOME",
        "RECEIVED",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let outcome = r.outcome_text();
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            [
                dash(&r.delivery_id),
                dash(&r.forge),
                dash(&r.event),
                dash(&r.repository),
                dash(&r.git_ref),
                r.sha
                    .as_deref()
                    .map_or("-".into(), |s| s.chars().take(12).collect()),
                outcome,
                r.received_at.clone(),
            ]
        })
        .collect();
    table(&header, &cells, "(no deliveries recorded yet)")
}

/// `deploybot rollback`: the same rollout code the worker uses, in this process.
fn rollback(settings: Settings, ask: crate::deploy::RollbackAsk) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let jobs = std::sync::Arc::new(Jobs::open(&settings.server.data_dir, "cli-rollback")?);
        let deployer = crate::deploy::connect(&settings, jobs).await;
        let masker = crate::worker::logs::Masker::new(settings.secret_values());
        let note = |text: &str| println!("{}", masker.mask(text));
        match crate::deploy::roll_back(&deployer, &settings, &ask, &note).await {
            Ok((_, crate::deploy::Outcome::Deployed { image })) => {
                println!("rolled back: {} runs {image}", ask.service);
                Ok(0)
            }
            Ok((_, crate::deploy::Outcome::Unchanged { running })) => {
                println!(
                    "rolled back: {} already runs {running} (the same digest); only its annotations changed",
                    ask.service
                );
                Ok(0)
            }
            Ok((_, other)) => {
                eprintln!("rollback {}", masker.mask(&other.to_string()));
                Ok(1)
            }
            Err(e) => {
                eprintln!("rollback: {e}");
                Ok(EXIT_BAD_CONFIG)
            }
        }
    })
}
