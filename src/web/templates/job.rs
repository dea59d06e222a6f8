//! `/jobs/{id}`: the pipeline as stages by service, each box coloured by its state and linking
//! to its log; why a stage failed; the images and their digests; what each rollout did.

use maud::{html, Markup};

use super::{header_row, state_badge};
use crate::domain::StageState;
use crate::store::{DeployRow, ImageRow, JobDetail, JobRow, StageRow};

/// The stages in pipeline order: the grid's columns follow it, so every service's boxes line up.
const STAGE_ORDER: [&str; 7] = [
    "checkout", "pipeline", "check", "compile", "image", "push", "deploy",
];

pub fn job(detail: &JobDetail) -> Markup {
    html! {
        (heading(&detail.job))
        (stage_grid(detail.job.id, &detail.stages))
        @for stage in &detail.stages { (why_it_stopped(stage)) }
        (images(&detail.images))
        (deploys(&detail.job.project, &detail.deploys))
    }
}

fn heading(job: &JobRow) -> Markup {
    html! {
        h1 { "Job " (job.id) " " (state_badge(job.state.as_str(), job.state.as_str())) }
        p {
            (job.project) " · " (job.git_ref) " · " code { (job.sha) }
            " · attempt " (job.attempt)
            @if job.recovered { " · recovered: its delivery never arrived" }
        }
        @if let Some(pull) = &job.pull { p { "Pull request " (super::pull_line(pull)) } }
        @if job.state == crate::domain::JobState::Waiting {
            p class="error" {
                "A pull request from a fork: nothing runs until an operator approves it "
                "(here, or POST /api/v1/jobs/" (job.id) "/approve with the action token)."
            }
            form method="post" action={ "/jobs/" (job.id) "/approve" } {
                input type="password" name="token" placeholder="action token" autocomplete="off";
                " "
                button { "approve" }
            }
        }
        @if let Some(error) = &job.error { p class="error" { (error) } }
    }
}

/// One row per service (the job's own stages, service `-`, as "job"), one column per stage used.
fn stage_grid(id: i64, stages: &[StageRow]) -> Markup {
    let mut services: Vec<&str> = stages.iter().map(|s| s.service.as_str()).collect();
    services.dedup();
    let used: Vec<&str> = STAGE_ORDER
        .into_iter()
        .filter(|name| stages.iter().any(|s| s.stage == *name))
        .collect();
    html! {
        table class="grid" {
            tr { th {} @for name in &used { th { (name) } } }
            @for service in services { (service_row(id, stages, service, &used)) }
        }
    }
}

/// A service's boxes, one cell per stage used, empty where it did not get that far.
fn service_row(id: i64, stages: &[StageRow], service: &str, used: &[&str]) -> Markup {
    html! {
        tr {
            th { (if service == "-" { "job" } else { service }) }
            @for name in used {
                td { @if let Some(stage) = find(stages, service, name) { (stage_box(id, stage)) } }
            }
        }
    }
}

/// The stage `name` of `service`, if it has one.
fn find<'a>(stages: &'a [StageRow], service: &str, name: &str) -> Option<&'a StageRow> {
    stages
        .iter()
        .find(|s| s.service == service && s.stage == name)
}

/// A stage's box: coloured by its state, labelled with it and its exit code, linking to the
/// service's log. The browser test finds it by `a.box[data-service][data-stage]`.
fn stage_box(id: i64, stage: &StageRow) -> Markup {
    html! {
        a class={ "box " (stage.state.as_str()) } data-service=(stage.service) data-stage=(stage.stage.as_str())
            href=(log_href(id, &stage.service)) {
            (stage.stage) br;
            small {
                (stage_label(stage.stage.as_str(), stage.state.as_str()))
                @if let Some(code) = stage.exit_code { " · exit " (code) }
            }
        }
    }
}

/// The log page of one service of job `id`, its name encoded for the query string.
fn log_href(id: i64, service: &str) -> String {
    match serde_urlencoded::to_string([("service", service)]) {
        Ok(query) => format!("/jobs/{id}/log?{query}"),
        // A pair of strings always encodes; should it not, the whole log is the next best.
        Err(_) => format!("/jobs/{id}/log"),
    }
}

/// A box's state as people say it: a deploy that succeeded is "deployed".
fn stage_label(stage: &str, state: &str) -> String {
    match (stage, state) {
        ("deploy", "success") => "deployed".into(),
        _ => state.replace('_', " "),
    }
}

/// The detail of a stage that failed or was rolled back (its log tail, or the reason).
fn why_it_stopped(stage: &StageRow) -> Markup {
    let what = match stage.state {
        StageState::Failed => "failed at",
        StageState::RolledBack => "rolled back at",
        _ => return html! {},
    };
    html! {
        @if let Some(text) = &stage.detail {
            h3 { (stage.service) " " (what) " " (stage.stage) }
            pre { (text) }
        }
    }
}

fn images(images: &[ImageRow]) -> Markup {
    html! {
        @if !images.is_empty() {
            h2 { "Images" }
            table {
                @for image in images {
                    tr {
                        td { (image.service) }
                        td { code { (image.reference) } }
                        td { code { (image.digest.as_deref().unwrap_or("not pushed")) } }
                    }
                }
            }
        }
    }
}

const DEPLOY_COLUMNS: [&str; 7] = [
    "service",
    "environment",
    "Deployment",
    "result",
    "image",
    "before",
    "why",
];

/// What each rollout did: where, what runs now, what ran before, and why it was rolled back;
/// then how to roll back by hand.
fn deploys(project: &str, deploys: &[DeployRow]) -> Markup {
    html! {
        @if !deploys.is_empty() {
            h2 id="deploys" { "Deploys" }
            table {
                (header_row(&DEPLOY_COLUMNS))
                @for deploy in deploys { (deploy_row(deploy)) }
            }
            p { small {
                "Roll a service back: "
                code { "deploybot rollback " (project) " SERVICE [--to TAG]" }
                ", or " code { "POST /api/v1/rollback" } " with the action token."
            } }
        }
    }
}

fn deploy_row(d: &DeployRow) -> Markup {
    html! {
        tr data-service=(d.service) {
            td { (d.service) }
            td { (d.environment) }
            td { (d.namespace) "/" (d.deployment) }
            td { (state_badge(d.state.as_str(), &d.state.as_str().replace('_', " "))) }
            td { code { (d.image) } }
            td { code { (d.previous_image.as_deref().unwrap_or("-")) } }
            td { (d.reason.as_deref().unwrap_or("")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RolloutCause, RolloutState};

    #[test]
    fn an_unchanged_rollout_shows_in_the_deploys_table_with_a_colour_of_its_own() {
        let row = DeployRow {
            id: 2,
            cause: RolloutCause::Release { job: 7 },
            project: "myevents".into(),
            service: "web".into(),
            environment: "production".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            container: "api".into(),
            tag: "v1.0.1".into(),
            pushed_at: String::new(),
            image: "registry/web:v1.0.1@sha256:aa".into(),
            previous_image: Some("registry/web:v1.0.0@sha256:aa".into()),
            generation: None,
            state: RolloutState::Unchanged,
            reason: None,
            created_at: String::new(),
            patched_at: None,
            finished_at: None,
        };

        let page = deploys("myevents", &[row]).into_string();

        assert!(
            page.contains(r#"<span class="state unchanged">unchanged</span>"#),
            "{page}"
        );
        assert!(super::super::STYLE.contains(".unchanged{"));
    }
}
