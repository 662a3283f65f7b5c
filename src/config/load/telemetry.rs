//! `telemetry:` → runtime `Telemetry`: the OTLP/HTTP collector URL taken
//! apart once, and the sampling ratio.

use super::Validator;
use crate::config::file::TelemetryFile;
use crate::config::runtime::{OtlpEndpoint, Telemetry};

/// Where OTLP/HTTP collectors take traces when the URL names only the server.
const TRACES_PATH: &str = "/v1/traces";

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, t: TelemetryFile) -> Option<Telemetry> {
        let sample = t.sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample) {
            self.err(
                "telemetry.sample",
                format!("`{sample}` is not a share between 0.0 and 1.0"),
            );
        }
        let Some(url) = t.otlp else {
            self.err(
                "telemetry",
                "`otlp` is required: the collector's URL, like http://127.0.0.1:4318",
            );
            return None;
        };
        match endpoint(&url) {
            Ok(otlp) => Some(Telemetry { otlp, sample }),
            Err(why) => {
                self.err("telemetry.otlp", why);
                None
            }
        }
    }
}

fn endpoint(url: &str) -> Result<OtlpEndpoint, String> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: https collectors are not supported yet; send to a collector agent on http (usually http://127.0.0.1:4318)"
            ))
        }
        _ => return Err(format!("`{url}` is not an http:// URL")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}` names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => TRACES_PATH.to_string(),
        Some(p) => p.to_string(),
    };
    Ok(OtlpEndpoint {
        url: url.trim().to_string(),
        host,
        port: uri.port_u16().unwrap_or(80),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart() {
        let e = endpoint("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let e = endpoint("http://collector/custom/traces").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 80, "/custom/traces")
        );
        let e = endpoint("http://[::1]:4318/").unwrap();
        assert_eq!(e.host, "::1");
        assert!(endpoint("https://c:4318").unwrap_err().contains("https"));
        assert!(endpoint("grpc://c:4317").is_err());
        assert!(endpoint("not a url").is_err());
    }
}
