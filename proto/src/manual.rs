//! Shell completions and man pages, generated from a binary's command-line definition, so they
//! never disagree with it.

use std::path::Path;

/// The shells completions are made for.
pub use clap_complete::Shell;

/// Writes `binary`'s completion script for `shell` to stdout (a reader that went away, as
/// `| head` does, is not an error).
pub fn completions(mut command: clap::Command, binary: &str, shell: Shell) -> std::io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, binary, &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes a man page (section 1) for `command` and each of its subcommands into `dir`:
/// `fleetsnap.1`, `fleetsnap-backup-run.1`, …; returns the files written.
pub fn man_pages(command: clap::Command, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(
        command.clone(),
        command.get_name().to_string(),
        dir,
        &mut written,
    )?;
    Ok(written)
}

fn write_pages(
    command: clap::Command,
    name: String,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    let command = command.name(name.clone());
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(
            sub.clone(),
            format!("{name}-{}", sub.get_name()),
            dir,
            written,
        )?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(command).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    written.push(path);
    Ok(())
}
