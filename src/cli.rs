//! The command line: `serve`, `check-config`, `deliveries`. Each subcommand loads the same
//! configuration (`--config PATH`, else `config/deploybot.toml` if present, else the embedded
//! defaults) and returns an exit code; `main` only prints errors.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};
use crate::startup::Application;
use crate::store::Reader;

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
}

/// Exit code for a configuration that cannot be used.
pub const EXIT_BAD_CONFIG: i32 = 2;

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Deliveries { limit, json } = cli.command {
        let server = match Settings::load_server(cli.config.as_deref()) {
            Ok(server) => server,
            Err(error) => return Ok(report_config_error(&error)),
        };
        return list_deliveries(&server.data_dir, limit, json);
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
        Command::Deliveries { limit, json } => {
            list_deliveries(&settings.server.data_dir, limit, json)
        }
    }
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
            let outcome = match (&r.outcome[..], r.job, &r.reason) {
                ("queued", Some(job), _) => format!("queued (job {job})"),
                (outcome, _, Some(reason)) if !reason.is_empty() => format!("{outcome}: {reason}"),
                (outcome, _, _) => outcome.to_owned(),
            };
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
    let mut widths = header.map(str::len);
    for row in &cells {
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
    for row in &cells {
        line(row);
    }
    if rows.is_empty() {
        out.push_str("(no deliveries recorded yet)\n");
    }
    out
}
