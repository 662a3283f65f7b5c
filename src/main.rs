//! The `ssegate` command line: parse arguments, load the config, run.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc hands memory freed after a connect storm back to the OS; glibc
// keeps it in its arenas, which shows up as resident memory per idle stream.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_CONFIG: &str = "conf/ssegate.yaml";
const EMBEDDED_CONFIG: &str = include_str!("../conf/ssegate.yaml");

/// `ssegate --version`: the crate version and the git revision it was built
/// from (`build.rs`; "unknown" when built outside a git checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SSEGATE_GIT_REV"),
    ")"
);

/// Environment variables that override the listen addresses of the loaded
/// config (containers, service units); see docs/config.md.
const ENV_LISTEN: &str = "SSEGATE_LISTEN";
const ENV_ADMIN_LISTEN: &str = "SSEGATE_ADMIN_LISTEN";

/// The environment the binary reads: `--help` and the man pages list it.
const ENVIRONMENT: [(&str, &str); 5] = [
    (
        "SSEGATE_CONFIG",
        "config file for `run` and `check` (as -c)",
    ),
    ("SSEGATE_LOG_FORMAT", "text | json (as --log-format)"),
    (
        ENV_LISTEN,
        "overrides `listen` of the config, e.g. 0.0.0.0:8080",
    ),
    (
        ENV_ADMIN_LISTEN,
        "overrides `admin.listen` of the config, e.g. 127.0.0.1:9090",
    ),
    ("RUST_LOG", "log filter, default info"),
];

fn env_help() -> String {
    let mut text = String::from("Environment:");
    for (name, what) in ENVIRONMENT {
        text.push_str(&format!("\n  {name:<21} {what}"));
    }
    text
}

#[derive(Parser, Debug)]
#[command(
    name = "ssegate",
    version = VERSION,
    about = "Adds Server-Sent Events to existing HTTP applications",
    after_help = env_help()
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, env = "SSEGATE_LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    #[command(after_help = env_help())]
    Run {
        /// Config file; when it is the default and absent, the built-in default config.
        #[arg(short, long, env = "SSEGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Live upgrade: take the listening sockets and the open plain
        /// HTTP/1.1 streams over from the gateway running on the same
        /// `upgrade_socket`, which is sent SIGQUIT (see docs/operations.md).
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the gateway in front of a built-in demo app, with a live page.
    Demo {
        /// Public listener (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Validate a config file: prints `ok` or every error as FILE:LINE:COL: message.
    #[command(after_help = env_help())]
    Check {
        /// Config file.
        #[arg(short, long, env = "SSEGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config file (for editors:
    /// `ssegate schema > ssegate.schema.json`).
    Schema,
    /// Write the manual pages (ssegate.1, ssegate-run.1, ...) into DIR: the
    /// Debian package's man pages come from the same definitions as --help.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// `ssegate man DIR`: ssegate.1 and one page per command, rendered from the
/// same clap definitions as `--help`, each with an ENVIRONMENT section.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    std::fs::create_dir_all(dir)?;
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut pages = vec![top.clone()];
    pages.extend(top.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for cmd in pages {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut out = Vec::new();
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if cmd.has_subcommands() {
            man.render_subcommands_section(&mut out)?;
        }
        let mut env = Roff::new();
        env.control("SH", ["ENVIRONMENT"]);
        for (name, what) in ENVIRONMENT {
            env.control("TP", []);
            env.text([bold(name)]);
            env.text([roman(what)]);
        }
        env.to_writer(&mut out)?;
        if cmd.get_version().is_some() {
            man.render_version_section(&mut out)?;
        }
        std::fs::write(dir.join(man.get_filename()), out)?;
    }
    Ok(())
}

/// `SSEGATE_LISTEN` / `SSEGATE_ADMIN_LISTEN` applied to a loaded config: the
/// file stays the one source for everything else.
fn apply_listen_env(config: &mut ssegate::config::Config) -> Result<(), String> {
    if let Some(addr) = env_addr(ENV_LISTEN)? {
        tracing::info!("listen address {addr} from {ENV_LISTEN}");
        // The default upgrade socket is named after the public port: follow
        // the moved port, or two instances of one file would share it.
        let runtime = || std::env::var("RUNTIME_DIRECTORY").ok();
        let by_default = ssegate::config::default_upgrade_socket(runtime(), config.listen.port());
        if config.upgrade_socket == by_default {
            config.upgrade_socket = ssegate::config::default_upgrade_socket(runtime(), addr.port());
        }
        config.listen = addr;
    }
    if let Some(addr) = env_addr(ENV_ADMIN_LISTEN)? {
        tracing::info!("admin listen address {addr} from {ENV_ADMIN_LISTEN}");
        config.admin.listen = addr;
    }
    if config.listen == config.admin.listen {
        return Err(format!(
            "{ENV_LISTEN}/{ENV_ADMIN_LISTEN}: the admin listener must not share the public address {}",
            config.listen
        ));
    }
    Ok(())
}

/// An address from the environment; unset or empty is `None`.
fn env_addr(name: &str) -> Result<Option<SocketAddr>, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name}: not valid UTF-8")),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|e| {
            format!("{name}={v:?}: {e} (expected IP:PORT, e.g. 0.0.0.0:8080 or [::1]:9090)")
        }),
    }
}

fn main() -> ExitCode {
    // Purge freed pages in the background too, not only when this process
    // allocates again: after a connect storm an idle gateway gives the
    // memory back instead of keeping it resident.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    ssegate::logging::init(matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Command::Check { config } => match ssegate::config::load(&config) {
            Ok(mut cfg) => match apply_listen_env(&mut cfg) {
                Ok(()) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{e}");
                    ExitCode::from(2)
                }
            },
            Err(errors) => {
                print!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Schema => {
            // Written, not println!-ed: `ssegate schema | head` must not panic.
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{:#}", ssegate::config::schema()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ssegate: cannot write the schema: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Man { dir } => match write_man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "ssegate: cannot write man pages into {}: {e}",
                    dir.display()
                );
                ExitCode::from(1)
            }
        },
        Command::Demo { listen, admin } => match ssegate::demo::run(listen, admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ssegate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, upgrade } => {
            let loaded = if config == std::path::Path::new(DEFAULT_CONFIG) && !config.exists() {
                // One binary that runs out of the box: the default config is built in.
                tracing::info!("{DEFAULT_CONFIG} not found; using the built-in default config");
                ssegate::config::load_str(EMBEDDED_CONFIG, &config, &|k| std::env::var(k).ok())
            } else {
                ssegate::config::load(&config)
            };
            let mut cfg = match loaded {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = apply_listen_env(&mut cfg) {
                eprintln!("ssegate: {e}");
                return ExitCode::from(2);
            }
            match ssegate::app::run(cfg, ssegate::app::Start { upgrade }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ssegate: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
