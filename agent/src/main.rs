//! `fleetsnap-agent`: one-shot snapshot, ls, verify and restore commands.

fn main() -> std::process::ExitCode {
    fleetsnap_agent::install_crypto_provider();
    fleetsnap_agent::cli::main()
}
