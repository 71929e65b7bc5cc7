//! Checks a daemon makes of its own host before it starts, shared by `check-config` of the
//! coordinator and the agent: what would otherwise fail later, in the middle of work.

use std::path::Path;

/// Checks that `dir` exists or can be made, and that a file can be created in it. `what` names
/// the setting for the message (`data_dir`, `[snapshot] spool_dir`).
pub fn check_writable_dir(dir: &Path, what: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "{what} {}: cannot create it ({e}); fix the path or the permissions of its parent",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".fleetsnap-check-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match written {
        Ok(_) => {
            std::fs::remove_file(&probe).ok();
            Ok(())
        }
        Err(e) => Err(format!(
            "{what} {}: this user cannot write in it ({e}); give the service's user write access to it",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_be_written_is_named() {
        let t = std::env::temp_dir().join(format!("fleetsnap-host-test-{}", std::process::id()));
        check_writable_dir(&t.join("a/b"), "data_dir").unwrap();
        std::fs::write(t.join("file"), b"").unwrap();
        let e = check_writable_dir(&t.join("file/sub"), "data_dir").unwrap_err();
        assert!(e.contains("data_dir") && e.contains("file/sub"), "{e}");
        std::fs::remove_dir_all(&t).ok();
    }
}
