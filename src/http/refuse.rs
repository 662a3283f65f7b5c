//! The one place where the gateway's typed errors become HTTP: a status, a
//! one-line reason for the client, and the `reason` label of
//! `ssegate_requests_refused_total`. Every refusal on either listener goes
//! through `Refusal::send`, so each is counted and answered the same way.

use super::body::BodyError;
use super::canonical::CanonicalError;
use super::respond;
use crate::auth::AuthError;
use crate::grip::InstructionError;
use crate::hub::record::RecordError;
use crate::hub::BrokerError;
use crate::metrics::Metrics;
use crate::outbound::{OutboundError, OutboundErrorKind};
use crate::sources::poll::{PollError, TargetError};
use crate::sources::publish::PublishError;
use crate::sources::webhook::WebhookError;
use crate::stream::limits::LimitError;
use crate::stream::request::SubscribeError;
use pingora_proxy::Session;

/// A request the gateway answers itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub reason: String,
    /// The metrics label: what kind of refusal, never request data.
    pub label: &'static str,
    /// `Allow:` for a 405.
    pub allow: Option<String>,
}

/// How each listener words its refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `text/plain`, the reason and a newline (the public listener).
    Text,
    /// `{"error": reason}` (the admin API).
    Json,
}

impl Refusal {
    pub(crate) fn new(status: u16, label: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            label,
            allow: None,
        }
    }

    pub(crate) fn method_not_allowed(allowed: &[http::Method], reason: &str) -> Refusal {
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Refusal {
            allow: Some(allow),
            ..Refusal::new(405, "method", reason)
        }
    }

    /// Count it and answer it. Ok(true): the request is done (pingora's
    /// `request_filter` convention).
    pub(crate) async fn send(
        &self,
        session: &mut Session,
        style: Style,
        metrics: &Metrics,
    ) -> pingora_error::Result<bool> {
        metrics.refuse(self.status, self.label);
        let extra: Vec<(&'static str, String)> =
            self.allow.iter().map(|a| ("allow", a.clone())).collect();
        match style {
            Style::Text => {
                respond::send(
                    session,
                    self.status,
                    "text/plain; charset=utf-8",
                    format!("{}\n", self.reason),
                    &extra,
                )
                .await?
            }
            Style::Json => {
                let body = serde_json::json!({ "error": self.reason }).to_string();
                respond::send(session, self.status, "application/json", body, &extra).await?
            }
        }
        Ok(true)
    }
}

impl From<SubscribeError> for Refusal {
    fn from(e: SubscribeError) -> Refusal {
        let (status, label) = match e {
            SubscribeError::NotAllowed(_) | SubscribeError::Reserved(_) => (403, "channel_denied"),
            _ => (400, "bad_channel"),
        };
        Refusal::new(status, label, e.to_string())
    }
}

impl From<CanonicalError> for Refusal {
    fn from(e: CanonicalError) -> Refusal {
        Refusal::new(400, "bad_request", e.to_string())
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Refusal {
        match &e {
            AuthError::Jwt(_) => Refusal::new(401, "auth", e.to_string()),
            AuthError::Denied { forbidden, .. } => {
                Refusal::new(if *forbidden { 403 } else { 401 }, "auth", e.to_string())
            }
            AuthError::Unavailable(_) | AuthError::BackendStatus(_) => {
                Refusal::new(502, "auth_backend", e.to_string())
            }
            AuthError::BadPathValue(_) => Refusal::new(400, "bad_value", e.to_string()),
            AuthError::Keys(_) => Refusal::new(503, "auth_keys", "signing keys unavailable"),
        }
    }
}

impl From<LimitError> for Refusal {
    fn from(e: LimitError) -> Refusal {
        Refusal::new(429, "limit", e.to_string())
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Refusal {
        Refusal::new(503, "broker", e.to_string())
    }
}

impl From<RecordError> for Refusal {
    fn from(e: RecordError) -> Refusal {
        let (status, label) = match e {
            RecordError::Unknown => (404, "record_unknown"),
            RecordError::Forbidden => (403, "record_forbidden"),
            RecordError::Unavailable(_) => (503, "records"),
        };
        Refusal::new(status, label, e.to_string())
    }
}

impl From<PollError> for Refusal {
    fn from(e: PollError) -> Refusal {
        match e {
            PollError::Target(t) => t.into(),
            PollError::Collision => Refusal::new(503, "poll", e.to_string()),
            PollError::Full(_) => Refusal::new(503, "poll_limit", e.to_string()),
        }
    }
}

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Refusal {
        Refusal::new(400, "bad_value", e.to_string())
    }
}

impl From<OutboundError> for Refusal {
    fn from(e: OutboundError) -> Refusal {
        let status = match e.kind {
            OutboundErrorKind::Timeout => 504,
            _ => 502,
        };
        Refusal::new(status, "upstream", e.to_string())
    }
}

impl From<InstructionError> for Refusal {
    fn from(e: InstructionError) -> Refusal {
        Refusal::new(502, "grip", e.to_string())
    }
}

impl From<PublishError> for Refusal {
    fn from(e: PublishError) -> Refusal {
        Refusal::new(400, "bad_publish", e.to_string())
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Refusal {
        match e {
            BodyError::TooLarge(_) => Refusal::new(413, "too_large", e.to_string()),
            BodyError::Read => Refusal::new(400, "bad_request", e.to_string()),
        }
    }
}

impl From<WebhookError> for Refusal {
    fn from(e: WebhookError) -> Refusal {
        let status = match e {
            WebhookError::Signature(_) => 401,
            _ => 400,
        };
        Refusal::new(status, e.outcome(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        assert_eq!(Refusal::from(LimitError::PerIp).status, 429);
        assert_eq!(
            Refusal::from(SubscribeError::NotAllowed("x".into())).status,
            403
        );
        assert_eq!(Refusal::from(SubscribeError::NoChannel).status, 400);
        let denied = AuthError::Denied {
            forbidden: true,
            reason: "no".into(),
        };
        assert_eq!(Refusal::from(denied).status, 403);
        assert_eq!(
            Refusal::from(AuthError::Jwt(crate::auth::jwt::JwtError::Expired)).reason,
            "token expired"
        );
        let timeout = OutboundError {
            upstream: "app".into(),
            kind: OutboundErrorKind::Timeout,
        };
        assert_eq!(Refusal::from(timeout).status, 504);
        assert_eq!(
            Refusal::from(BrokerError::Unavailable("redis: down".into())).status,
            503
        );
        assert_eq!(Refusal::from(RecordError::Unknown).status, 404);
        assert_eq!(Refusal::from(RecordError::Forbidden).status, 403);
    }
}
