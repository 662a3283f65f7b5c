//! The `ssegate` command line: parse arguments, load the config, run.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc hands memory freed after a connect storm back to the OS; glibc
// keeps it in its arenas, which shows up as resident memory per idle stream.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Validate a config file: prints `ok` or every error as FILE:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = "conf/ssegate.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
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
        Command::Run { config } => {
            let cfg = match ssegate::config::load(&config) {
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
