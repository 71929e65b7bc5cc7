//! `fleetsnap-chaos`: runs the chaos scenarios and writes their report.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use fleetsnap_chaos::fleet::Fleet;
use fleetsnap_chaos::net;
use fleetsnap_chaos::scenario::{self, Ctx, Outcome};
use rand::SeedableRng;

#[derive(Parser)]
#[command(about = "Runs fleetsnap's chaos scenarios (as root: they make network namespaces)")]
struct Args {
    /// Only the quick subset (the one `.ci/run` runs).
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (repeat).
    #[arg(long)]
    scenario: Vec<String>,
    /// The run's seed (printed; give it again to replay the same faults at the same moments).
    #[arg(long)]
    seed: Option<u64>,
    /// Appends the run's report to this Markdown file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Lists the scenarios.
    #[arg(long)]
    list: bool,
}

/// A scenario's seed: the run's, mixed with its name, so one can be replayed alone.
fn seed_of(run: u64, name: &str) -> u64 {
    name.bytes().fold(run ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Ran {
    name: &'static str,
    about: &'static str,
    seed: u64,
    seconds: f64,
    outcome: Outcome,
}

fn main() -> ExitCode {
    fleetsnap_agent::install_crypto_provider();
    let args = Args::parse();
    let scenarios: Vec<_> = scenario::all()
        .into_iter()
        .filter(|s| !args.quick || s.quick)
        .filter(|s| args.scenario.is_empty() || args.scenario.iter().any(|n| n == s.name))
        .collect();
    if args.list {
        for s in &scenario::all() {
            println!(
                "{}{}\t{}",
                s.name,
                if s.quick { " (quick)" } else { "" },
                s.about
            );
        }
        return ExitCode::SUCCESS;
    }
    if scenarios.is_empty() {
        eprintln!("no scenario matches {:?}: see --list", args.scenario);
        return ExitCode::from(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the chaos suite makes network namespaces and iptables rules: run it as root");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("chaos run seed {seed} ({} scenarios)", scenarios.len());
    let mut ran = Vec::new();
    for s in scenarios {
        let sseed = seed_of(seed, s.name);
        println!(
            "== {} (seed {seed}; replay: --scenario {} --seed {seed})",
            s.name, s.name
        );
        let started = Instant::now();
        let outcome = run_one(s.run, sseed, s.name).unwrap_or_else(|e| Outcome {
            error: Some(format!("{e:#}")),
            ..Outcome::default()
        });
        let seconds = started.elapsed().as_secs_f64();
        if outcome.passed() {
            println!("   passed in {seconds:.0}s");
        } else {
            println!("   FAILED in {seconds:.0}s");
            if let Some(e) = &outcome.error {
                println!("     ✗ did not run to its end: {e}");
            }
            for f in outcome.verdict.failures() {
                println!("     ✗ {}: {}", f.invariant, f.detail);
            }
        }
        ran.push(Ran {
            name: s.name,
            about: s.about,
            seed: sseed,
            seconds,
            outcome,
        });
    }
    let passed = ran.iter().filter(|r| r.outcome.passed()).count();
    println!(
        "chaos: {passed} passed, {} failed (seed {seed})",
        ran.len() - passed
    );
    if let Some(path) = &args.report
        && let Err(e) = write_report(path, seed, args.quick, &ran)
    {
        eprintln!("cannot write the report to {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if passed == ran.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Builds the lab, runs the scenario on a runtime whose threads live on the client host, and
/// removes everything after, whatever happened.
fn run_one(run: scenario::RunFn, seed: u64, name: &str) -> anyhow::Result<Outcome> {
    let lab = Fleet::hosts()?;
    let client = lab.host("client").ns.clone();
    let keep_to = PathBuf::from("target/chaos-logs").join(format!("{name}-{seed}"));
    std::thread::scope(|s| {
        s.spawn(move || -> anyhow::Result<Outcome> {
            net::enter(&client)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start({
                    let client = client.clone();
                    move || {
                        net::enter(&client).expect("enter the client host");
                    }
                })
                .build()?;
            rt.block_on(async move {
                let fleet = Fleet::start(lab, seed).await?;
                let mut ctx = Ctx {
                    fleet,
                    rng: rand::rngs::StdRng::seed_from_u64(seed),
                    started: Instant::now(),
                    out: Outcome::default(),
                };
                let r = tokio::time::timeout(Duration::from_secs(900), run(&mut ctx)).await;
                let r = match r {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("the scenario ran for over 15 minutes")),
                };
                if let Err(e) = r {
                    ctx.out.error = Some(format!("{e:#}"));
                }
                if !ctx.out.passed() {
                    keep_logs(&ctx.fleet.logs(), &keep_to);
                    eprintln!("   logs: {}", keep_to.display());
                }
                Ok(ctx.out)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the scenario's thread panicked"))?
    })
}

fn keep_logs(logs: &[PathBuf], to: &PathBuf) {
    if std::fs::create_dir_all(to).is_err() {
        return;
    }
    for l in logs {
        if let Some(name) = l.file_name() {
            let _ = std::fs::copy(l, to.join(name));
        }
    }
}

fn write_report(path: &PathBuf, seed: u64, quick: bool, ran: &[Ran]) -> std::io::Result<()> {
    let mut text = String::new();
    if !path.exists() {
        text += "# Chaos reports\n\nEach run of `scripts/chaos.sh` appends a section (see README, \"Chaos suite\").\n";
    }
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let passed = ran.iter().filter(|r| r.outcome.passed()).count();
    text += &format!(
        "\n## Run of {date}: seed {seed}{}, {passed} of {} passed\n\n",
        if quick { " (quick subset)" } else { "" },
        ran.len()
    );
    text += "| scenario | scenario seed | result | seconds |\n|---|---|---|---|\n";
    for r in ran {
        let o = &r.outcome;
        let result = if o.passed() {
            "passed".to_string()
        } else if let Some(e) = &o.error {
            format!("failed: {}", e.replace('|', "/"))
        } else {
            format!("failed ({} invariants)", o.verdict.failures().len())
        };
        text += &format!(
            "| {} | {} | {result} | {:.0} |\n",
            r.name, r.seed, r.seconds
        );
    }
    for r in ran {
        text += &format!("\n### {}\n\n{}.\n\n", r.name, r.about);
        let o = &r.outcome;
        if let Some(e) = &o.error {
            text += &format!("Did not run to its end: {e}\n\n");
        }
        text += "Faults:\n";
        for f in &o.faults {
            text += &format!("- {f}\n");
        }
        text += "\nInvariants:\n";
        for f in &o.verdict.findings {
            text += &format!(
                "- {} {}: {}\n",
                if f.ok { "✓" } else { "✗" },
                f.invariant,
                f.detail
            );
        }
        if !o.figures.is_empty() {
            text += "\nFigures:\n";
            for (k, v) in &o.figures {
                text += &format!("- {k}: {v}\n");
            }
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
