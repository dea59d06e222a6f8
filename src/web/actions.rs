//! Actions: re-run a job, cancel one, approve one from a fork, roll a service back. Pages and reads need no token;
//! these do.
//!
//! Authentication is a bearer token from config (`web.action_token`), compared in constant
//! time. Browsers never attach a bearer token on their own, so a forged cross-site request
//! carries none; as defence in depth, a request whose `Origin` is not this server is refused
//! too. Without a configured token, actions are off.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;

use super::api::{error, Views};
use crate::domain::JobState;
use crate::forge::token_matches;

/// The action token, shared with the handlers.
pub struct ActionToken(pub Option<SecretString>);

/// Why an action was refused: the status and the one-line reason.
struct Refused(u16, &'static str);

impl Refused {
    fn response(&self) -> HttpResponse {
        error(self.0, self.1)
    }
}

/// Who may act: a 401 unless the request carries the token (as a bearer, or typed into a
/// page's form: `typed`), a 403 for a foreign origin.
fn authorize(
    request: &HttpRequest,
    token: &ActionToken,
    typed: Option<&str>,
) -> Result<(), Refused> {
    let Some(expected) = &token.0 else {
        return Err(Refused(403, "actions are off: set web.action_token"));
    };
    let given = typed.or_else(|| {
        request
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    });
    match given {
        Some(given) if token_matches(expected, given) => {}
        Some(_) => return Err(Refused(401, "the action token is not valid")),
        None => {
            return Err(Refused(
                401,
                "missing header Authorization: Bearer <action token>",
            ))
        }
    }
    if let Some(origin) = request
        .headers()
        .get("Origin")
        .and_then(|v| v.to_str().ok())
    {
        let host = request.connection_info().host().to_owned();
        let same = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host);
        if !same {
            return Err(Refused(403, "cross-origin actions are refused"));
        }
    }
    Ok(())
}

/// One action on one job: what it does to the store, the state it leaves, and what a job it
/// cannot act on is told.
struct Action {
    name: &'static str,
    apply: fn(&crate::store::Jobs, i64) -> Result<bool, crate::store::StoreError>,
    leaves: &'static str,
    only: &'static str,
}

const RERUN: Action = Action {
    name: "Re-run",
    apply: crate::store::Jobs::rerun,
    leaves: "queued",
    only: "only a finished job can be re-run",
};

const CANCEL: Action = Action {
    name: "Cancel",
    apply: crate::store::Jobs::cancel,
    leaves: "canceled",
    only: "only a waiting, queued or running job can be canceled",
};

const APPROVE: Action = Action {
    name: "Approve",
    apply: crate::store::Jobs::approve,
    leaves: "queued",
    only: "only a job waiting for approval can be approved",
};

/// Takes the action; answers the response and, when it was taken, the state the job was in.
/// `typed`: the token a page's form carried, if the action came from one.
async fn act(
    request: &HttpRequest,
    views: &Arc<Views>,
    token: &ActionToken,
    id: i64,
    action: Action,
    typed: Option<&str>,
) -> (HttpResponse, Option<JobState>) {
    if let Err(refused) = authorize(request, token, typed) {
        return (refused.response(), None);
    }
    let apply = action.apply;
    match views
        .read(move |v| Ok((v.jobs.state(id)?, apply(&v.jobs, id)?)))
        .await
    {
        Ok((None, _)) => (error(404, &format!("job {id}: no such job")), None),
        Ok((Some(before), true)) => {
            tracing::info!(job = id, action = action.name, "Action taken");
            let response = HttpResponse::Accepted()
                .json(serde_json::json!({ "job": id, "state": action.leaves }));
            (response, Some(before))
        }
        Ok((Some(state), false)) => (
            error(409, &format!("job {id} is {state}; {}", action.only)),
            None,
        ),
        Err(response) => (response, None),
    }
}

pub async fn rerun(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    wake: web::Data<Arc<tokio::sync::Notify>>,
    id: web::Path<i64>,
) -> HttpResponse {
    let (response, taken) = act(&request, &views, &token, id.into_inner(), RERUN, None).await;
    if taken.is_some() {
        wake.notify_one();
    }
    response
}

pub async fn cancel(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    intake: web::Data<crate::intake::IntakeState>,
    id: web::Path<i64>,
) -> HttpResponse {
    let id = id.into_inner();
    let (response, before) = act(&request, &views, &token, id, CANCEL, None).await;
    // A running job's worker reports its end; a queued or waiting one has no worker yet.
    if matches!(before, Some(JobState::Queued | JobState::Waiting)) {
        report(&views, &intake, id, crate::worker::report_canceled).await;
    }
    response
}

/// Lets a pull request from a fork run; its status says it was approved.
pub async fn approve(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    intake: web::Data<crate::intake::IntakeState>,
    id: web::Path<i64>,
) -> HttpResponse {
    let id = id.into_inner();
    let (response, before) = act(&request, &views, &token, id, APPROVE, None).await;
    if before.is_some() {
        approved(&views, &intake, id).await;
    }
    response
}

/// The token typed into a page's action form.
#[derive(serde::Deserialize)]
pub struct TypedToken {
    token: String,
}

/// The job page's approve form (a browser cannot send a bearer token): the same action, then
/// back to the job.
pub async fn approve_from_page(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    intake: web::Data<crate::intake::IntakeState>,
    id: web::Path<i64>,
    form: web::Form<TypedToken>,
) -> HttpResponse {
    let id = id.into_inner();
    let (response, before) = act(&request, &views, &token, id, APPROVE, Some(&form.token)).await;
    if before.is_none() {
        return response;
    }
    approved(&views, &intake, id).await;
    HttpResponse::SeeOther()
        .insert_header(("Location", format!("/jobs/{id}")))
        .finish()
}

/// What follows an approval: the worker is woken and the job's status says it was approved.
async fn approved(views: &Arc<Views>, intake: &crate::intake::IntakeState, id: i64) {
    intake.wake.notify_one();
    report(views, intake, id, crate::worker::report_approved).await;
}

/// Queues the statuses an action causes (`queue`), and wakes the report sender.
async fn report(
    views: &Arc<Views>,
    intake: &crate::intake::IntakeState,
    id: i64,
    queue: fn(
        &crate::config::Settings,
        &crate::store::Jobs,
        i64,
    ) -> Result<(), crate::store::StoreError>,
) {
    let settings = intake.settings.clone();
    let reported = views.read(move |v| queue(&settings, &v.jobs, id)).await;
    if reported.is_ok() {
        intake.reports.notify_one();
    }
}

/// What the rollback action needs: the deployer the worker uses (and its store).
pub struct Rollbacks {
    pub deployer: Arc<crate::deploy::Deployer<crate::deploy::KubeCluster>>,
    pub settings: Arc<crate::config::Settings>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// `POST /api/v1/rollback` with `{"project", "service", "environment"?, "to"?}`: rolls the
/// service back and answers when the rollout is done (rollbacks to a ReplicaSet that still
/// exists take well under a second).
pub async fn rollback(
    request: HttpRequest,
    token: web::Data<ActionToken>,
    rollbacks: web::Data<Rollbacks>,
    body: web::Bytes,
) -> HttpResponse {
    use crate::deploy::{RollbackAsk, RollbackError};
    if let Err(refused) = authorize(&request, &token, None) {
        return refused.response();
    }
    let ask: RollbackAsk = match serde_json::from_slice(&body) {
        Ok(ask) => ask,
        Err(e) => return error(400, &format!("body: {e}")),
    };
    let masker = crate::worker::logs::Masker::new(rollbacks.settings.secret_values());
    let note = |text: &str| tracing::info!(service = %ask.service, "{}", masker.mask(text));
    let outcome =
        crate::deploy::roll_back(&rollbacks.deployer, &rollbacks.settings, &ask, &note).await;
    match outcome {
        Ok((environment, outcome)) => match rolled_back_to(&outcome) {
            Some((state, image)) => {
                rollbacks
                    .metrics
                    .rollbacks_by_hand
                    .with_label_values(&[environment.as_str()])
                    .inc();
                tracing::info!(project = %ask.project, service = %ask.service, %image, state, "Rolled back by hand");
                HttpResponse::Ok().json(serde_json::json!({
                    "project": ask.project, "service": ask.service, "environment": environment,
                    "state": state, "image": image
                }))
            }
            None => error(502, &masker.mask(&format!("rollback {outcome}"))),
        },
        Err(e @ RollbackError::Unknown(_)) => error(404, &e.to_string()),
        Err(e @ RollbackError::NoTarget(_)) => error(409, &e.to_string()),
        Err(e @ RollbackError::Store(_)) => error(500, &e.to_string()),
    }
}

/// The state and image of a rollback that is done: deployed, or unchanged (the Deployment
/// already ran that digest, so only its annotations changed); None for one that is not.
fn rolled_back_to(outcome: &crate::deploy::Outcome) -> Option<(&'static str, &str)> {
    use crate::deploy::Outcome;
    match outcome {
        Outcome::Deployed { image } => Some(("deployed", image)),
        Outcome::Unchanged { running } => Some(("unchanged", running)),
        Outcome::RolledBack { .. } | Outcome::Skipped { .. } | Outcome::Failed { .. } => None,
    }
}
