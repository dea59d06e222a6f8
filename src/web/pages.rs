//! Server-rendered pages: small, fast, no front-end build. Every value is HTML-escaped.

use std::fmt::Write;
use std::sync::Arc;

use actix_web::{web, HttpResponse};

use super::api::{JobsQuery, Views};
use crate::store::JobDetail;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\
.state{padding:2px 8px;border-radius:4px;color:#fff;background:#888}\
.success,.deployed{background:#2e7d32}.failed{background:#c62828}.rolled_back,.rolling_back{background:#ef6c00}.running{background:#1565c0}\
.pending,.queued{background:#9e9e9e}.skipped{background:#bdbdbd;color:#333}.superseded{background:#6d4c41}\
.grid td{border:none}.box{display:block;min-width:90px;padding:6px;border-radius:6px;color:#fff;text-decoration:none;text-align:center}\
pre{background:#111;color:#eee;padding:1em;overflow:auto;max-height:60vh}\
#deploys+table code{word-break:break-all}";

fn page(title: &str, body: &str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{} · deploybot</title><style>{STYLE}</style></head><body><p><a href=\"/\">deploybot</a></p>{body}</body></html>",
        escape(title)
    ))
}

/// `/`: recent jobs, filterable by project and state.
pub async fn index(views: web::Data<Arc<Views>>, query: web::Query<JobsQuery>) -> HttpResponse {
    if let Err(reason) = query.checked_state(true) {
        return super::api::error(400, &reason);
    }
    let (project, state, limit) = query.into_inner().filters();
    let read = views
        .read(move |v| {
            v.jobs
                .list_filtered(limit, project.as_deref(), state.as_deref())
        })
        .await;
    let jobs = match read {
        Ok(jobs) => jobs,
        Err(response) => return response,
    };
    let mut body = String::from(
        "<h1>Jobs</h1><p><a href=\"/deliveries\">deliveries</a></p><form method=get>\
         <input name=project placeholder=project> <select name=state><option value=\"\">any state</option>",
    );
    for job_state in super::api::JOB_STATES {
        let _ = write!(body, "<option>{job_state}</option>");
    }
    body.push_str("</select> <button>filter</button></form><table><tr><th>job</th><th>project</th><th>ref</th><th>sha</th><th>state</th><th>attempt</th><th>created</th><th>finished</th></tr>");
    for job in &jobs {
        let _ = write!(
            body,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{project}</td><td>{git_ref}</td><td><code>{sha}</code></td><td><span class=\"state {state}\">{state}</span></td><td>{attempt}</td><td>{created}</td><td>{finished}</td></tr>",
            id = job.id,
            project = escape(&job.project),
            git_ref = escape(&job.git_ref),
            sha = escape(&job.sha.chars().take(12).collect::<String>()),
            state = escape(&job.state),
            attempt = job.attempt,
            created = escape(&job.created_at),
            finished = escape(job.finished_at.as_deref().unwrap_or("-")),
        );
    }
    body.push_str("</table>");
    if jobs.is_empty() {
        body.push_str("<p>No jobs yet.</p>");
    }
    page("Jobs", &body)
}

/// `/jobs/{id}`: the pipeline as stages by service, each box coloured by its state and
/// linking to its log; the images and their digests; the failure's log tail.
pub async fn job(views: web::Data<Arc<Views>>, id: web::Path<i64>) -> HttpResponse {
    let id = id.into_inner();
    let detail = match views.read(move |v| v.jobs.get(id)).await {
        Ok(Some(detail)) => detail,
        Ok(None) => {
            return HttpResponse::NotFound()
                .content_type("text/html; charset=utf-8")
                .body(format!("<p>job {id}: no such job</p>"))
        }
        Err(response) => return response,
    };
    page(&format!("Job {id}"), &job_body(&detail))
}

fn job_body(detail: &JobDetail) -> String {
    let job = &detail.job;
    let mut body = format!(
        "<h1>Job {id} <span class=\"state {state}\">{state}</span></h1><p>{project} · {git_ref} · <code>{sha}</code> · attempt {attempt}</p>",
        id = job.id,
        state = escape(&job.state),
        project = escape(&job.project),
        git_ref = escape(&job.git_ref),
        sha = escape(&job.sha),
        attempt = job.attempt,
    );
    if let Some(error) = &job.error {
        let _ = write!(body, "<p class=\"error\">{}</p>", escape(error));
    }
    let order = [
        "checkout", "pipeline", "check", "compile", "image", "push", "deploy",
    ];
    let mut services: Vec<&str> = detail.stages.iter().map(|s| s.service.as_str()).collect();
    services.dedup();
    // One column per stage, in pipeline order, so every service's boxes line up.
    let used: Vec<&str> = order
        .iter()
        .copied()
        .filter(|name| detail.stages.iter().any(|s| s.stage == *name))
        .collect();
    body.push_str("<table class=\"grid\"><tr><th></th>");
    for name in &used {
        let _ = write!(body, "<th>{name}</th>");
    }
    body.push_str("</tr>");
    for service in services {
        let label = if service == "-" { "job" } else { service };
        let _ = write!(body, "<tr><th>{}</th>", escape(label));
        for name in &used {
            if let Some(stage) = detail
                .stages
                .iter()
                .find(|s| s.service == service && s.stage == *name)
            {
                let _ = write!(
                    body,
                    "<td><a class=\"box {state}\" data-service=\"{service}\" data-stage=\"{stage}\" href=\"/jobs/{id}/log?service={service}\">{stage}<br><small>{label}{exit}</small></a></td>",
                    state = escape(&stage.state),
                    label = escape(&stage_label(&stage.stage, &stage.state)),
                    service = escape(service),
                    stage = escape(&stage.stage),
                    id = job.id,
                    exit = stage.exit_code.map(|c| format!(" · exit {c}")).unwrap_or_default(),
                );
            } else {
                body.push_str("<td></td>");
            }
        }
        body.push_str("</tr>");
    }
    body.push_str("</table>");
    for stage in detail
        .stages
        .iter()
        .filter(|s| s.state == "failed" || s.state == "rolled_back")
    {
        if let Some(text) = &stage.detail {
            let what = if stage.state == "failed" {
                "failed at"
            } else {
                "rolled back at"
            };
            let _ = write!(
                body,
                "<h3>{} {what} {}</h3><pre>{}</pre>",
                escape(&stage.service),
                escape(&stage.stage),
                escape(text)
            );
        }
    }
    if !detail.images.is_empty() {
        body.push_str("<h2>Images</h2><table>");
        for image in &detail.images {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&image.service),
                escape(&image.reference),
                escape(image.digest.as_deref().unwrap_or("not pushed")),
            );
        }
        body.push_str("</table>");
    }
    deploys_section(&mut body, detail);
    body
}

/// A box's state as people say it: a deploy that succeeded is "deployed".
fn stage_label(stage: &str, state: &str) -> String {
    match (stage, state) {
        ("deploy", "success") => "deployed".into(),
        _ => state.replace('_', " "),
    }
}

/// What each rollout did: where, what runs now, what ran before, and why it was rolled back.
fn deploys_section(body: &mut String, detail: &JobDetail) {
    if detail.deploys.is_empty() {
        return;
    }
    body.push_str("<h2 id=deploys>Deploys</h2><table><tr><th>service</th><th>environment</th><th>Deployment</th><th>result</th><th>image</th><th>before</th><th>why</th></tr>");
    for d in &detail.deploys {
        let _ = write!(
            body,
            "<tr data-service=\"{service}\"><td>{service}</td><td>{environment}</td><td>{namespace}/{deployment}</td><td><span class=\"state {state}\">{label}</span></td><td><code>{image}</code></td><td><code>{previous}</code></td><td>{reason}</td></tr>",
            service = escape(&d.service),
            environment = escape(&d.environment),
            namespace = escape(&d.namespace),
            deployment = escape(&d.deployment),
            state = escape(d.state.as_str()),
            label = escape(&d.state.as_str().replace('_', " ")),
            image = escape(&d.image),
            previous = escape(d.previous_image.as_deref().unwrap_or("-")),
            reason = escape(d.reason.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        body,
        "</table><p><small>Roll a service back: <code>deploybot rollback {} SERVICE [--to TAG]</code>, or <code>POST /api/v1/rollback</code> with the action token.</small></p>",
        escape(&detail.job.project)
    );
}

/// `/deliveries`: the recorded webhook deliveries and what became of each (queued, ignored
/// with why, rejected with why), so a person can see why a push did nothing.
pub async fn deliveries(views: web::Data<Arc<Views>>) -> HttpResponse {
    let read = views
        .read(|v| {
            v.reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliveries(200)
        })
        .await;
    let rows = match read {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    let mut body = String::from("<h1>Deliveries</h1><table><tr><th>received</th><th>project</th><th>forge</th><th>event</th><th>ref</th><th>sha</th><th>outcome</th><th>delivery</th></tr>");
    for row in &rows {
        let outcome = match (row.outcome.as_str(), row.job, row.reason.as_deref()) {
            ("queued", Some(job), _) => format!("<a href=\"/jobs/{job}\">queued (job {job})</a>"),
            (outcome, _, Some(reason)) if !reason.is_empty() => {
                format!("{}: {}", escape(outcome), escape(reason))
            }
            (outcome, _, _) => escape(outcome),
        };
        let dash = |v: &Option<String>| escape(v.as_deref().unwrap_or("-"));
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"outcome {}\">{outcome}</td><td><code>{}</code></td></tr>",
            escape(&row.received_at),
            escape(&row.project),
            dash(&row.forge),
            dash(&row.event),
            dash(&row.git_ref),
            escape(&row.sha.as_deref().unwrap_or("-").chars().take(12).collect::<String>()),
            escape(&row.outcome),
            dash(&row.delivery_id),
        );
    }
    body.push_str("</table>");
    page("Deliveries", &body)
}

/// `/jobs/{id}/log`: one service's log (or all), following live while the job runs.
pub async fn log(
    views: web::Data<Arc<Views>>,
    id: web::Path<i64>,
    query: web::Query<super::api::LogsQuery>,
) -> HttpResponse {
    let id = id.into_inner();
    let service = query.into_inner().service;
    let filter = service.clone();
    let chunks = match views
        .read(move |v| v.jobs.logs(id, filter.as_deref(), 0))
        .await
    {
        Ok(chunks) => chunks,
        Err(response) => return response,
    };
    let mut text = String::new();
    for chunk in &chunks {
        for line in chunk.text.lines() {
            let _ = writeln!(text, "{} {}| {line}", chunk.service, chunk.stage);
        }
    }
    let after = chunks.last().map_or(0, |c| c.id);
    let only = service
        .as_deref()
        .map(|s| format!(" · {}", escape(s)))
        .unwrap_or_default();
    // A few lines of script follow the log over Server-Sent Events; without script the page
    // is still the whole log so far.
    let body = format!(
        "<h1>Job <a href=\"/jobs/{id}\">{id}</a> log{only}</h1><pre id=\"log\">{log}</pre>\
<script>const s={service};const es=new EventSource('/api/v1/jobs/{id}/logs/stream');let last={after};\
es.addEventListener('log',e=>{{if(+e.lastEventId<=last)return;for(const l of e.data.split('\\n')){{if(s&&!l.startsWith(s+' '))continue;document.getElementById('log').textContent+=l+'\\n';}}}});\
es.addEventListener('end',()=>es.close());</script>",
        log = escape(&text),
        service = serde_json::to_string(&service).unwrap_or_else(|_| "null".into()).replace('<', "\\u003c"),
    );
    page(&format!("Job {id} log"), &body)
}
