//! `fleetsnap-coordinator --config FILE [--insecure]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleetsnap_coordinator::{config::Config, run};

#[derive(Parser)]
#[command(
    name = "fleetsnap-coordinator",
    version,
    about = "fleetsnap coordinator: the Raft-replicated control plane agents report to"
)]
struct Args {
    /// The config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve gRPC in plain text, without certificates (test machines only).
    #[arg(long)]
    insecure: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETSNAP_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    run::raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetsnap-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let config = Config::load(&args.config)?;
        let transport = run::transport(&config, args.insecure)?;
        run::run(config, transport, async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetsnap-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}
