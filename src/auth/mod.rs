//! Who may do what: subscriber JWTs (`jwt`), forward auth to the backend
//! (`forward`), keys fetched from a JWKS URL (`jwks`), closing streams
//! whose token expired (`expiry`), and webhook signature schemes (`signature`).

pub(crate) mod expiry;
pub(crate) mod forward;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod signature;

use crate::config::{Jwt, Keys, RouteAuth};
use crate::metrics::Metrics;
use crate::outbound::{Client, OutboundError, Pool};
use crate::template::RenderError;
use crate::values::RequestValues;
use forward::Forward;
use jwt::JwtError;
use std::fmt;
use std::sync::Arc;

/// Why a subscriber was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token, or one that does not verify.
    Jwt(JwtError),
    /// The auth backend said no (401 or 403), with its first line as the reason.
    Denied { forbidden: bool, reason: String },
    /// The auth backend could not be asked.
    Unavailable(OutboundError),
    /// The auth backend answered neither 2xx nor 401/403.
    BackendStatus(u16),
    /// A value of the auth path is missing or would change the path's shape.
    BadPathValue(RenderError),
    /// No signing keys to check tokens with (`jwks_url` failing from the start).
    Keys(jwks::JwksError),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Jwt(e) => e.fmt(f),
            AuthError::Denied { reason, .. } => f.write_str(reason),
            AuthError::Unavailable(_) => f.write_str("auth backend unavailable"),
            AuthError::BackendStatus(s) => write!(f, "auth backend answered {s}"),
            AuthError::BadPathValue(e) => write!(f, "bad value for the auth path: {e}"),
            AuthError::Keys(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AuthError {}

/// A route's auth, ready to run: its JWT settings and its forward-auth
/// client with the route's answer cache.
#[derive(Debug, Default)]
pub struct Guard {
    jwt: Option<Arc<Jwt>>,
    /// The JWT's keys when they come from `jwks_url`.
    remote: Option<Arc<jwks::RemoteKeys>>,
    forward: Option<Forward>,
}

impl Guard {
    /// `pool` is the forward-auth upstream (resolved when the config was
    /// loaded: a route that names one always has it).
    pub fn new(auth: &RouteAuth, pool: Option<Arc<Pool>>) -> Guard {
        let remote = auth.jwt.as_ref().and_then(|j| match &j.keys {
            Keys::Remote(url) => Some(jwks::RemoteKeys::shared(url)),
            _ => None,
        });
        Guard {
            remote,
            jwt: auth.jwt.clone(),
            forward: auth
                .forward
                .clone()
                .zip(pool)
                .map(|(settings, pool)| Forward::new(settings, pool)),
        }
    }

    pub fn jwt(&self) -> Option<&Jwt> {
        self.jwt.as_deref()
    }

    /// Run the route's auth for one request: the JWT first, then forward
    /// auth. What they establish goes into `values.identity`, for `{jwt.x}`,
    /// `{auth.x}` and the token's channels claim. Each decision is counted
    /// in `ssegate_auth_decisions_total{kind, outcome}`.
    pub async fn check(
        &self,
        client: &Client,
        values: &mut RequestValues<'_>,
        metrics: &Metrics,
    ) -> Result<(), AuthError> {
        if let Some(jwt) = &self.jwt {
            let verified = match jwt::token(jwt, values) {
                None => Err(AuthError::Jwt(JwtError::Missing)),
                Some(token) => match &self.remote {
                    Some(remote) => remote
                        .verify(client, jwt, token)
                        .await
                        .map_err(|e| match e {
                            jwks::RemoteError::Jwt(e) => AuthError::Jwt(e),
                            jwks::RemoteError::Keys(e) => AuthError::Keys(e),
                        }),
                    None => jwt::verify(jwt, token).map_err(AuthError::Jwt),
                },
            };
            let claims = decided(metrics, "jwt", verified)?;
            values.identity.allowed = claims.channel_patterns(&jwt.channels_claim);
            values.identity.claims = Some(claims);
        }
        if let Some(fwd) = &self.forward {
            let answer = match fwd.render_path(values) {
                Ok(path) => fwd.check(client, values, &path, metrics).await,
                Err(e) => Err(e),
            };
            values.identity.exposed = decided(metrics, "forward", answer)?;
        }
        Ok(())
    }
}

/// Count one auth decision: allow, deny (the client was refused) or error
/// (it could not be decided: the auth backend failed).
fn decided<T>(
    metrics: &Metrics,
    kind: &'static str,
    r: Result<T, AuthError>,
) -> Result<T, AuthError> {
    let outcome = match &r {
        Ok(_) => "allow",
        Err(AuthError::Unavailable(_) | AuthError::BackendStatus(_) | AuthError::Keys(_)) => {
            "error"
        }
        Err(AuthError::Jwt(_) | AuthError::Denied { .. } | AuthError::BadPathValue(_)) => "deny",
    };
    metrics.auth.with_label_values(&[kind, outcome]).inc();
    r
}
