//! Who may do what: subscriber JWTs (`jwt`), forward auth to the backend
//! (`forward`), closing streams whose token expired (`expiry`), and webhook
//! signature schemes (`signature`).

pub mod expiry;
pub mod forward;
pub mod jwt;
pub mod signature;

use crate::config::template::Var;
use crate::config::SseRoute;
use crate::fetch::Fetcher;
use crate::sse::request::{self, Identity, Refusal};
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// Run a route's auth for one request: the JWT first (401 with a one-line
/// reason), then forward auth (its 401/403, or 502). What they established
/// fills `{jwt.x}`, `{auth.x}` and the token's channel claim.
pub async fn authorize(
    fetcher: &Fetcher,
    req: &RequestHeader,
    route: &SseRoute,
    params: &[(String, String)],
) -> Result<Identity, Refusal> {
    let mut id = Identity::default();
    let query = request::query_pairs(req);
    if let Some(jwt) = &route.auth.jwt {
        let token = jwt.token(req, &query).ok_or_else(|| Refusal {
            status: 401,
            reason: "missing token".into(),
        })?;
        let claims = jwt.verify(token).map_err(|why| Refusal {
            status: 401,
            reason: why.into(),
        })?;
        id.allowed = claims.channel_patterns(&jwt.channels_claim);
        id.claims = Some(claims);
    }
    if let Some(fwd) = &route.auth.forward {
        let path = fwd.render_path(|v: &Var| match v {
            Var::Param(n) => request::param(params, n),
            Var::Query(n) => query
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
            Var::Header(n) => request::header(req, n).map(Cow::Borrowed),
            Var::Jwt(n) => id.claims.as_ref().and_then(|c| c.get(n)),
            _ => None,
        })?;
        id.exposed = fwd.check(fetcher, req, &path).await?;
    }
    Ok(id)
}
