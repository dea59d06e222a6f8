//! Every place a page shows outside data, given a value that would break out of its text or
//! attribute, shows it escaped.

use super::*;
use crate::domain::{StageName, StageState};
use crate::store::{DeployRow, ImageRow, JobDetail, RolloutCause, RolloutState, StageRow};

/// Closes an attribute, then opens an element with a script.
const HOSTILE: &str = r#""><img src=x onerror=alert(1)>"#;
const ESCAPED: &str = "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;";

/// `html` shows `HOSTILE` escaped, and nowhere raw.
fn assert_escaped(case: &str, html: &str) {
    assert!(!html.contains("<img"), "{case}: raw in {html}");
    assert!(html.contains(ESCAPED), "{case}: not shown in {html}");
}

fn job_row() -> JobRow {
    JobRow {
        id: 7,
        project: "drone".into(),
        git_ref: "refs/tags/v1.0.0".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        state: JobState::Failed,
        attempt: 1,
        created_at: "2024-05-01T10:00:00Z".into(),
        started_at: None,
        finished_at: None,
        error: None,
        recovered: false,
        pull: None,
    }
}

fn stage(service: &str, state: &str, detail: Option<&str>) -> StageRow {
    StageRow {
        service: service.into(),
        stage: StageName::Check,
        state: StageState::from_text(state).unwrap(),
        exit_code: Some(2),
        detail: detail.map(Into::into),
        started_at: None,
        finished_at: None,
    }
}

fn deploy_row(service: &str, reason: &str) -> DeployRow {
    DeployRow {
        id: 1,
        cause: RolloutCause::Release { job: 7 },
        project: "drone".into(),
        service: service.into(),
        environment: "production".into(),
        namespace: "default".into(),
        deployment: "web".into(),
        container: "web".into(),
        tag: "v1.0.0".into(),
        pushed_at: "2024-05-01T10:00:00Z".into(),
        image: "registry/team/web@sha256:ab".into(),
        previous_image: Some("registry/team/web@sha256:cd".into()),
        generation: Some(3),
        state: RolloutState::RolledBack,
        reason: Some(reason.into()),
        created_at: "2024-05-01T10:00:00Z".into(),
        patched_at: None,
        finished_at: None,
    }
}

fn detail(stages: Vec<StageRow>, deploys: Vec<DeployRow>) -> JobDetail {
    JobDetail {
        job: job_row(),
        stages,
        images: Vec::new(),
        deploys,
    }
}

fn delivery_row(git_ref: &str, outcome: &str, reason: Option<&str>) -> DeliveryRow {
    DeliveryRow {
        id: 1,
        delivery_id: Some("d-1".into()),
        project: "drone".into(),
        forge: Some("github".into()),
        event: Some("push".into()),
        repository: Some("team/drone".into()),
        git_ref: Some(git_ref.into()),
        sha: None,
        outcome: outcome.into(),
        reason: reason.map(Into::into),
        received_at: "2024-05-01T10:00:00Z".into(),
        job: None,
        headers: String::new(),
        event_json: None,
        source: Some(HOSTILE.into()),
        repeats: 3,
        origin: "webhook".into(),
        pull: None,
    }
}

#[test]
fn a_hostile_ref_name_is_escaped_on_the_jobs_job_and_deliveries_pages() {
    let job = JobRow {
        git_ref: HOSTILE.into(),
        ..job_row()
    };

    let index = jobs(std::slice::from_ref(&job), &[JobState::Failed]).into_string();
    let page = super::job(&JobDetail {
        job,
        ..detail(Vec::new(), Vec::new())
    })
    .into_string();
    let delivered = deliveries(&[delivery_row(HOSTILE, "ignored", None)]).into_string();

    assert_escaped("jobs page", &index);
    assert_escaped("job page", &page);
    assert_escaped("deliveries page", &delivered);
}

#[test]
fn a_hostile_service_name_is_escaped_in_every_place_the_job_page_shows_it() {
    let stages = vec![stage(HOSTILE, "failed", Some("vet failed"))];
    let deploys = vec![deploy_row(HOSTILE, "ProgressDeadlineExceeded")];
    let mut detail = detail(stages, deploys);
    detail.images.push(ImageRow {
        service: HOSTILE.into(),
        reference: "registry/team/web:v1.0.0".into(),
        digest: None,
    });

    let page = super::job(&detail).into_string();

    assert_escaped("job page", &page);
    assert!(
        page.contains(
            r#"href="/jobs/7/log?service=%22%3E%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E""#
        ),
        "the log link encodes the service for its query: {page}"
    );
}

#[test]
fn a_hostile_stage_detail_is_escaped_under_the_stage_that_failed() {
    let page = job(&detail(
        vec![stage("web", "failed", Some(HOSTILE))],
        Vec::new(),
    ));

    assert_escaped("stage detail", &page.into_string());
}

#[test]
fn a_hostile_deploy_reason_is_escaped_in_the_deploys_table() {
    let page = job(&detail(Vec::new(), vec![deploy_row("web", HOSTILE)]));

    assert_escaped("deploy reason", &page.into_string());
}

#[test]
fn a_hostile_delivery_reason_is_escaped_beside_its_outcome() {
    let page = deliveries(&[delivery_row("refs/heads/main", "rejected", Some(HOSTILE))]);

    assert_escaped("delivery reason", &page.into_string());
}

#[test]
fn hostile_log_text_is_escaped_on_the_log_page() {
    let page = log(7, Some("web"), HOSTILE, 3);

    assert_escaped("log text", &page.into_string());
}

#[test]
fn a_hostile_service_reaches_the_log_page_only_as_escaped_text_and_attribute() {
    let page = log(7, Some(HOSTILE), "", 3).into_string();

    assert_escaped("log page", &page);
    assert!(
        page.contains(&format!(r#"data-service="{ESCAPED}""#)),
        "the script reads the service from an attribute: {page}"
    );
    assert!(
        page.contains(&format!("<script>{FOLLOW_LOG}</script>")),
        "the script is the constant, with nothing put into it: {page}"
    );
}

#[test]
fn the_log_page_of_all_services_gives_the_script_no_service() {
    let page = log(7, None, "", 0).into_string();

    assert!(!page.contains("data-service"), "{page}");
}

#[test]
fn a_hostile_title_is_escaped_in_the_layout() {
    let page = layout(HOSTILE, html! {}).into_string();

    assert_escaped("title", &page);
}
