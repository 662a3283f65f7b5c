//! `tls:` and `http2:` → runtime `Tls` and `Http2`. The certificate and key
//! are read and cross-checked here, so that `ssegate check` refuses what the
//! listener could not serve, pointing at the `tls.cert` or `tls.key` line.

use super::Validator;
use crate::config::file::{Http2File, TlsFile};
use crate::config::runtime::{Http2, Tls};
use crate::tls::{self, Part};
use std::path::Path;

/// Well above the ~100 that browsers and pingora default to: one page with
/// many EventSources must not queue streams behind each other.
pub(super) const DEFAULT_MAX_STREAMS: u32 = 1000;

impl Validator<'_> {
    pub(super) fn tls(&mut self, t: &TlsFile, source: &Path) -> Option<Tls> {
        // Relative to the config file, so that `check` and `run` agree
        // whatever the working directory.
        let dir = source.parent().unwrap_or(Path::new(""));
        let cert = dir.join(&t.cert);
        let key = dir.join(&t.key);
        match tls::load(&cert, &key) {
            Ok(_) => Some(Tls { cert, key }),
            Err(p) => {
                let at = match p.part {
                    Part::Cert => "tls.cert",
                    Part::Key => "tls.key",
                };
                self.err(at, p.message);
                None
            }
        }
    }

    pub(super) fn http2(&mut self, h: Http2File, has_tls: bool) -> Http2 {
        let h2c = h.h2c.unwrap_or(false);
        if h2c && has_tls {
            self.err(
                "http2.h2c",
                "`h2c` is for plain-text listeners; with `tls:` HTTP/2 is negotiated by ALPN, remove `h2c`",
            );
        }
        let max_concurrent_streams = h.max_concurrent_streams.unwrap_or(DEFAULT_MAX_STREAMS);
        if max_concurrent_streams == 0 {
            self.err(
                "http2.max_concurrent_streams",
                "max_concurrent_streams must be at least 1",
            );
        }
        Http2 {
            h2c,
            max_concurrent_streams,
        }
    }
}
