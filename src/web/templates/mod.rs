//! What the pages look like, as maud markup: every value put into a page is HTML-escaped by
//! construction, because `html!` escapes whatever it is given unless it is wrapped in
//! `PreEscaped`. Only the two constants below are raw, and they hold no outside data. No I/O:
//! `pages.rs` reads the store and answers.

mod job;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::domain::JobState;
use crate::store::{DeliveryRow, JobRow};

pub use job::job;

/// The pages' one stylesheet. Raw because escaping is wrong inside `<style>` (the browser does
/// not decode entities there); it is a constant, so no outside value can reach it.
const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
.state{padding:2px 8px;border-radius:4px;color:#fff;background:#888}\
.success,.deployed{background:#2e7d32}.unchanged{background:#558b2f}.failed{background:#c62828}.rolled_back,.rolling_back{background:#ef6c00}.running{background:#1565c0}\
.pending,.queued{background:#9e9e9e}.skipped{background:#bdbdbd;color:#333}.superseded{background:#6d4c41}\
.grid td{border:none}.box{display:block;min-width:90px;padding:6px;border-radius:6px;color:#fff;text-decoration:none;text-align:center}\
pre{background:#111;color:#eee;padding:1em;overflow:auto;max-height:60vh}\
#deploys+table code{word-break:break-all}";

/// Follows a job's log over Server-Sent Events, appending the lines of the page's service (or
/// all). Raw because escaping is wrong inside `<script>`; it is a constant that reads the job,
/// the service and the last chunk shown from the `#log` element's `data-*` attributes, so that
/// outside values only ever go through escaped attributes, never into script text.
const FOLLOW_LOG: &str = r"const log=document.getElementById('log');
const s=log.dataset.service;let last=+log.dataset.after;
const es=new EventSource('/api/v1/jobs/'+log.dataset.job+'/logs/stream');
es.addEventListener('log',e=>{if(+e.lastEventId<=last)return;
for(const l of e.data.split('\n')){if(s&&!l.startsWith(s+' '))continue;log.textContent+=l+'\n';}});
es.addEventListener('end',()=>es.close());";

/// The frame every page shares: title, stylesheet and the link home.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                title { (title) " · deploybot" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                p { a href="/" { "deploybot" } }
                (body)
            }
        }
    }
}

/// A table's heading row.
fn header_row(names: &[&str]) -> Markup {
    html! { tr { @for name in names { th { (name) } } } }
}

/// A state as a coloured badge: its name is both its class and its text.
fn state_badge(state: &str, label: &str) -> Markup {
    html! { span class={ "state " (state) } { (label) } }
}

const JOB_COLUMNS: [&str; 8] = [
    "job", "project", "ref", "sha", "state", "attempt", "created", "finished",
];

/// `/`: recent jobs, with the filter form.
pub fn jobs(jobs: &[JobRow], states: &[JobState]) -> Markup {
    html! {
        h1 { "Jobs" }
        p { a href="/deliveries" { "deliveries" } }
        (jobs_filter(states))
        table {
            (header_row(&JOB_COLUMNS))
            @for job in jobs { (job_row(job)) }
        }
        @if jobs.is_empty() { p { "No jobs yet." } }
    }
}

/// The form that filters the jobs by project, state and kind of ref; empty means any.
fn jobs_filter(states: &[JobState]) -> Markup {
    html! {
        form method="get" {
            input name="project" placeholder="project";
            " "
            select name="state" {
                option value="" { "any state" }
                @for state in states { option { (state.as_str()) } }
            }
            " "
            select name="kind" {
                option value="" { "any ref" }
                option value="branch" { "branches" }
                option value="tag" { "tags" }
                option value="pull" { "pull requests" }
            }
            " "
            button { "filter" }
        }
    }
}

fn job_row(job: &JobRow) -> Markup {
    html! {
        tr {
            td { a href={ "/jobs/" (job.id) } { (job.id) } }
            td { (job.project) }
            td {
                (job.git_ref)
                @if let Some(pull) = &job.pull { br; small { (pull_line(pull)) } }
            }
            td { code { (short_sha(&job.sha)) } }
            td { (state_badge(job.state.as_str(), job.state.as_str())) }
            td { (job.attempt) }
            td { (job.created_at) }
            td { (job.finished_at.as_deref().unwrap_or("-")) }
        }
    }
}

/// A pull request as the pages say it: number, title, author, branches, fork.
pub(super) fn pull_line(pull: &crate::store::PullInfo) -> String {
    let fork = if pull.from_fork { " (from a fork)" } else { "" };
    format!(
        "#{} {} by {}: {} into {}{fork}",
        pull.number, pull.title, pull.author, pull.source_branch, pull.target_branch
    )
}

/// The first 12 characters of a commit, as lists show it.
fn short_sha(sha: &str) -> String {
    sha.chars().take(12).collect()
}

const DELIVERY_COLUMNS: [&str; 8] = [
    "received", "project", "forge", "event", "ref", "sha", "outcome", "delivery",
];

/// `/deliveries`: each recorded webhook delivery and what became of it.
pub fn deliveries(rows: &[DeliveryRow]) -> Markup {
    html! {
        h1 { "Deliveries" }
        table {
            (header_row(&DELIVERY_COLUMNS))
            @for row in rows { (delivery_row(row)) }
        }
    }
}

fn delivery_row(row: &DeliveryRow) -> Markup {
    html! {
        tr {
            td { (row.received_at) }
            td { (row.project) }
            td { (or_dash(&row.forge)) }
            td { (or_dash(&row.event)) }
            td { (or_dash(&row.git_ref)) }
            td { code { (short_sha(row.sha.as_deref().unwrap_or("-"))) } }
            td class={ "outcome " (row.outcome) } { (delivery_outcome(row)) }
            td { code { (or_dash(&row.delivery_id)) } }
        }
    }
}

/// A value a delivery may lack, or "-".
fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

/// A queued delivery links to its job; an ignored or rejected one says why (and how many
/// more rejections from its source were counted on it).
fn delivery_outcome(row: &DeliveryRow) -> Markup {
    match (row.outcome.as_str(), row.job) {
        ("queued", Some(job)) => {
            html! {
                a href={ "/jobs/" (job) } { "queued (job " (job) ")" }
                @if row.origin == "recovered" { ", recovered: its delivery never arrived" }
            }
        }
        _ => html! { (row.outcome_text()) },
    }
}

/// `/jobs/{id}/log`: the log so far (`text`, up to chunk `after`), one service's or all, and
/// the script that follows it live.
pub fn log(id: i64, service: Option<&str>, text: &str, after: i64) -> Markup {
    html! {
        h1 {
            "Job " a href={ "/jobs/" (id) } { (id) } " log"
            @if let Some(service) = service { " · " (service) }
        }
        pre id="log" data-job=(id) data-after=(after) data-service=[service] { (text) }
        script { (PreEscaped(FOLLOW_LOG)) }
    }
}

/// The answer for a job that does not exist.
pub fn no_such_job(id: i64) -> Markup {
    html! { p { "job " (id) ": no such job" } }
}

#[cfg(test)]
mod tests;
