//! `fleetsnap-coordinator --config FILE [--insecure] [--log-format json]`, and
//! `fleetsnap-coordinator check-config` with the same arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fleetsnap_coordinator::{config::Config, run};

#[derive(Parser)]
#[command(
    name = "fleetsnap-coordinator",
    version,
    about = "fleetsnap coordinator: the Raft-replicated control plane agents report to",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file as the coordinator would read it (with the same arguments), then
    /// exit: 0 when it would start with it, 1 with what is wrong.
    CheckConfig(RunArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: fleetsnap_proto::manual::Shell,
    },
    /// Write man pages (section 1) for this command and each subcommand into DIR.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: std::path::PathBuf,
    },
}

/// How the coordinator starts.
#[derive(clap::Args)]
struct RunArgs {
    /// The config file (TOML).
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Serve gRPC in plain text, without certificates (test machines only).
    #[arg(long)]
    insecure: bool,
    /// Take the node id from this host's name instead of the config: `NAME-N` (a StatefulSet
    /// pod) is node N+1. `$HOSTNAME` is read first.
    #[arg(long)]
    node_id_from_hostname: bool,
    #[command(flatten)]
    log: fleetsnap_telemetry::LogArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run::raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetsnap-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::CheckConfig(args)) => check(args),
            Some(Command::Completions { shell }) => {
                fleetsnap_proto::manual::completions(Cli::command(), "fleetsnap-coordinator", shell)
                    .map_err(|e| format!("cannot write the completion script: {e}"))
            }
            Some(Command::Man { dir }) => fleetsnap_proto::manual::man_pages(Cli::command(), &dir)
                .map(|pages| println!("{} man pages written to {}", pages.len(), dir.display()))
                .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display())),
            None => serve(cli.run).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetsnap-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config as these arguments make it.
fn load(args: &RunArgs) -> Result<Config, String> {
    let path = args
        .config
        .as_ref()
        .ok_or_else(|| "--config FILE is required".to_string())?;
    let node_id = if args.node_id_from_hostname {
        let name = fleetsnap_proto::tls::host_name().unwrap_or_default();
        Some(fleetsnap_coordinator::config::node_id_from_hostname(&name)?)
    } else {
        None
    };
    Config::load_as(path, node_id)
}

fn check(args: RunArgs) -> Result<(), String> {
    let config = load(&args)?;
    let path = args.config.as_ref().expect("loaded");
    fleetsnap_proto::host::check_writable_dir(&config.data_dir, "data_dir")?;
    if !args.insecure {
        // Reads the certificates and checks they are this node's.
        run::transport(&config, false)?;
    }
    println!(
        "{}: node {}, listening on {}, initial members: {}, policies: {}; the coordinator \
         would start with it",
        path.display(),
        config.node_id,
        config.listen,
        config.initial_members.len(),
        config.policy.len()
    );
    Ok(())
}

async fn serve(args: RunArgs) -> Result<(), String> {
    let config = load(&args)?;
    let telemetry = fleetsnap_telemetry::init(
        fleetsnap_telemetry::Service {
            name: "fleetsnap-coordinator",
            instance: config.node_id.to_string(),
        },
        args.log.log_format,
        "info,openraft=warn",
        config.telemetry.otlp_endpoint.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let transport = run::transport(&config, args.insecure)?;
    let result = run::run(config, transport, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await;
    telemetry.shutdown().await;
    result
}
