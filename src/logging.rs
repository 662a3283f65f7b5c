//! Logs on stderr through `tracing`, with pingora's `log` records bridged in.
//!
//! The bridge is ours rather than tracing-log's stock `LogTracer` for one
//! reason: pingora reports every failed TLS or HTTP/2 handshake at ERROR.
//! On a public port those are scanners, health probes and clients that hung
//! up early: nothing an operator can act on, and a cheap way for anyone to
//! flood the log. They are demoted to DEBUG here.

/// Install the subscriber and the `log` bridge; `json` picks the format.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // pingora logs at debug/trace on every request: records above the most
    // verbose level the filter can pass must be dropped by `log` itself, for
    // free, not formatted and bridged first (that cost most of a proxied
    // request's CPU).
    let max = match filter.max_level_hint() {
        Some(l) if l == tracing::level_filters::LevelFilter::OFF => log::LevelFilter::Off,
        Some(l) if l == tracing::level_filters::LevelFilter::ERROR => log::LevelFilter::Error,
        Some(l) if l == tracing::level_filters::LevelFilter::WARN => log::LevelFilter::Warn,
        Some(l) if l == tracing::level_filters::LevelFilter::INFO => log::LevelFilter::Info,
        Some(l) if l == tracing::level_filters::LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = if json {
        tracing::subscriber::set_global_default(builder.json().finish())
    } else {
        tracing::subscriber::set_global_default(builder.finish())
    };
    if installed.is_err() {
        return; // already set up (tests that call this twice)
    }
    if log::set_boxed_logger(Box::new(Bridge)).is_ok() {
        log::set_max_level(max);
    }
}

/// Is this record one of the per-connection handshake failures?
fn is_handshake_noise(record: &log::Record<'_>) -> bool {
    if record.level() > log::Level::Warn || !record.target().starts_with("pingora_core") {
        return false;
    }
    let text = record.args().to_string();
    [
        "Downstream handshake error",
        "Downstream handshake timeout",
        "H2 handshake error",
        "TLS shutdown failed",
        // A new process waiting for the running one's sockets (`--upgrade`)
        // says so once a second; ours says it once, at INFO.
        "No incoming socket transfer",
    ]
    .iter()
    .any(|p| text.starts_with(p))
}

#[derive(Debug)]
struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The subscriber's filter decides, in `format_trace`.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = if is_handshake_noise(record) {
            log::Level::Debug
        } else {
            record.level()
        };
        let _ = tracing_log::format_trace(
            &log::Record::builder()
                .args(*record.args())
                .level(level)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handshake_failures_are_demoted() {
        let rec = |target: &'static str, level, args: std::fmt::Arguments<'_>| {
            is_handshake_noise(
                &log::Record::builder()
                    .target(target)
                    .level(level)
                    .args(args)
                    .build(),
            )
        };
        assert!(rec(
            "pingora_core::services::listening",
            log::Level::Error,
            format_args!("Downstream handshake error from 1.2.3.4:5: x")
        ));
        assert!(!rec(
            "pingora_core::services::listening",
            log::Level::Error,
            format_args!("Accept() failed x")
        ));
        assert!(!rec(
            "ssegate",
            log::Level::Error,
            format_args!("Downstream handshake error")
        ));
    }
}
