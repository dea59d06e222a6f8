//! Actions: re-run a job, cancel one. Pages and reads need no token; these do.
//!
//! Authentication is a bearer token from config (`web.action_token`), compared in constant
//! time. Browsers never attach a bearer token on their own, so a forged cross-site request
//! carries none; as defence in depth, a request whose `Origin` is not this server is refused
//! too. Without a configured token, actions are off.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;

use super::api::{error, Views};
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

/// Who may act: a 401 unless the request carries the token, a 403 for a foreign origin.
fn authorize(request: &HttpRequest, token: &ActionToken) -> Result<(), Refused> {
    let Some(expected) = &token.0 else {
        return Err(Refused(403, "actions are off: set web.action_token"));
    };
    let given = request
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
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

pub async fn rerun(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    wake: web::Data<Arc<tokio::sync::Notify>>,
    id: web::Path<i64>,
) -> HttpResponse {
    if let Err(refused) = authorize(&request, &token) {
        return refused.response();
    }
    let id = id.into_inner();
    match views
        .read(move |v| Ok((v.jobs.state(id)?, v.jobs.rerun(id)?)))
        .await
    {
        Ok((None, _)) => error(404, &format!("job {id}: no such job")),
        Ok((Some(_), true)) => {
            wake.notify_one();
            tracing::info!(job = id, "Re-run requested");
            HttpResponse::Accepted().json(serde_json::json!({ "job": id, "state": "queued" }))
        }
        Ok((Some(state), false)) => error(
            409,
            &format!("job {id} is {state}; only a finished job can be re-run"),
        ),
        Err(response) => response,
    }
}

pub async fn cancel(
    request: HttpRequest,
    views: web::Data<Arc<Views>>,
    token: web::Data<ActionToken>,
    id: web::Path<i64>,
) -> HttpResponse {
    if let Err(refused) = authorize(&request, &token) {
        return refused.response();
    }
    let id = id.into_inner();
    match views
        .read(move |v| Ok((v.jobs.state(id)?, v.jobs.cancel(id)?)))
        .await
    {
        Ok((None, _)) => error(404, &format!("job {id}: no such job")),
        Ok((Some(_), true)) => {
            tracing::info!(job = id, "Cancel requested");
            HttpResponse::Accepted().json(serde_json::json!({ "job": id, "state": "canceled" }))
        }
        Ok((Some(state), false)) => error(
            409,
            &format!("job {id} is {state}; only a queued or running job can be canceled"),
        ),
        Err(response) => response,
    }
}
