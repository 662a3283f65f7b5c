//! The `ssegate` command line: parse arguments, load the config, run.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc hands memory freed after a connect storm back to the OS; glibc
// keeps it in its arenas, which shows up as resident memory per idle stream.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_CONFIG: &str = "conf/ssegate.yaml";
const EMBEDDED_CONFIG: &str = include_str!("../conf/ssegate.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "ssegate",
    version,
    about = "Adds Server-Sent Events to existing HTTP applications"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
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
    Run {
        #[arg(short, long, default_value = "conf/ssegate.yaml")]
        config: PathBuf,
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
    Check {
        #[arg(short, long, default_value = "conf/ssegate.yaml")]
        config: PathBuf,
    },
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
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                print!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Demo { listen, admin } => match ssegate::demo::run(listen, admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ssegate: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let loaded = if config == std::path::Path::new(DEFAULT_CONFIG) && !config.exists() {
                // One binary that runs out of the box: the default config is built in.
                tracing::info!("{DEFAULT_CONFIG} not found; using the built-in default config");
                ssegate::config::load_str(EMBEDDED_CONFIG, &config, &|k| std::env::var(k).ok())
            } else {
                ssegate::config::load(&config)
            };
            let cfg = match loaded {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    return ExitCode::from(2);
                }
            };
            match ssegate::app::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ssegate: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
