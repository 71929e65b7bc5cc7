//! Files inside a directory that cannot be left: every path below the root is walked one part at
//! a time with `openat` and `O_NOFOLLOW`, so neither `..` (refused before this by the key rules)
//! nor a symbolic link planted in the directory leads outside it, and only regular files are
//! opened (`O_NONBLOCK` first: a FIFO or a device in their place never blocks the caller). A
//! file region is such a directory.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A directory whose files are reached only from inside it.
#[derive(Clone, Debug)]
pub struct Confined {
    root: PathBuf,
}

/// A file opened for writing under a temporary name, and the directory it is renamed in.
pub struct Created {
    /// The open file.
    pub file: File,
    pending: Pending,
}

fn c(part: &str) -> io::Result<CString> {
    CString::new(part).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A clearer error for what `O_NOFOLLOW` and the type check refuse.
fn explain(e: io::Error, part: &str) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
        io::Error::new(
            e.kind(),
            format!(
                "{part:?} is a symbolic link or not a directory: links inside a region are not followed"
            ),
        )
    } else {
        e
    }
}

fn open_at(
    dir: libc::c_int,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the descriptor returned is owned here.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: `st` is written by fstat before it is read.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        cvt(libc::fstat(fd, &mut st))?;
        Ok(st)
    }
}

/// What a file type is called in an error.
fn kind_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

fn not_regular(mode: libc::mode_t, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} is {}, not a regular file: refused", kind_name(mode)),
    )
}

/// The parts of a checked relative key.
fn parts(rel: &str) -> Vec<&str> {
    rel.split('/').filter(|p| !p.is_empty()).collect()
}

impl Confined {
    /// A directory; nothing is opened yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The path a relative key names, for messages.
    pub fn display_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        let path = CString::new(self.root.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the region's path")
        })?;
        // SAFETY: `path` is NUL-terminated; the descriptor returned is owned here. The root
        // itself is the operator's and may be a link.
        let fd = cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: just opened, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The directory holding `rel`'s last part, walked without following links; made on the
    /// way when `create`.
    fn parent(&self, rel: &str, create: bool) -> io::Result<(OwnedFd, CString)> {
        let parts = parts(rel);
        let (last, dirs) = parts
            .split_last()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an empty key"))?;
        if create {
            std::fs::create_dir_all(&self.root)?;
        }
        let mut dir = self.open_root()?;
        for part in dirs {
            let name = c(part)?;
            let next = match open_at(
                dir.as_raw_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            ) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    // SAFETY: `name` is NUL-terminated.
                    match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    open_at(
                        dir.as_raw_fd(),
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY,
                        0,
                    )
                }
                r => r,
            }
            .map_err(|e| explain(e, part))?;
            dir = next;
        }
        Ok((dir, c(last)?))
    }

    /// Opens a regular file for reading.
    pub fn open(&self, rel: &str) -> io::Result<File> {
        let (dir, name) = self.parent(rel, false)?;
        let fd = open_at(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(|e| explain(e, rel))?;
        let st = fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(not_regular(st.st_mode, rel));
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor owned here.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok(File::from(fd))
    }

    /// The size of a regular file.
    pub fn size(&self, rel: &str) -> io::Result<u64> {
        let (dir, name) = self.parent(rel, false)?;
        // SAFETY: `st` is written by fstatat before it is read; `name` is NUL-terminated.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            cvt(libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ))?;
            st
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(not_regular(st.st_mode, rel));
        }
        Ok(st.st_size as u64)
    }

    /// Creates `rel` under `rel.partial`, exclusively and without following a link (a stale
    /// temporary file from a crashed write is removed first); the [`Pending`] it carries renames it.
    pub fn create(&self, rel: &str) -> io::Result<Created> {
        let (dir, name) = self.parent(rel, true)?;
        let mut temp = name.as_bytes().to_vec();
        temp.extend_from_slice(b".partial");
        let temp = CString::new(temp).expect("no NUL");
        // SAFETY: `temp` is NUL-terminated; unlinkat never follows a link.
        unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) };
        let fd = open_at(
            dir.as_raw_fd(),
            &temp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o644,
        )
        .map_err(|e| explain(e, rel))?;
        Ok(Created {
            file: File::from(fd),
            pending: Pending { dir, temp, name },
        })
    }

    /// Removes a file (one already gone is no error), then the directories it leaves empty, up
    /// to the root.
    pub fn remove(&self, rel: &str) -> io::Result<()> {
        let (dir, name) = match self.parent(rel, false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // SAFETY: `name` is NUL-terminated; unlinkat removes a link itself, never its target.
        match cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        drop(dir);
        let parts = parts(rel);
        for depth in (1..parts.len()).rev() {
            let sub = parts[..depth].join("/");
            let Ok((parent, last)) = self.parent(&sub, false) else {
                break;
            };
            // SAFETY: `last` is NUL-terminated; fails harmlessly on a directory not empty.
            if unsafe { libc::unlinkat(parent.as_raw_fd(), last.as_ptr(), libc::AT_REMOVEDIR) } != 0
            {
                break;
            }
        }
        Ok(())
    }

    /// Whether `rel`, a directory below the root, resolves inside it (no link on the way).
    pub fn dir_inside(&self, rel: &str) -> bool {
        if rel.is_empty() {
            return true;
        }
        let Ok((dir, name)) = self.parent(rel, false) else {
            return false;
        };
        open_at(
            dir.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .is_ok()
    }
}

impl Created {
    /// Splits off the file, keeping what commit and abort need.
    pub fn into_parts(self) -> (File, Pending) {
        (self.file, self.pending)
    }
}

/// What renames a written file into place once its writer is done with it.
pub struct Pending {
    dir: OwnedFd,
    temp: CString,
    name: CString,
}

impl Pending {
    /// Renames the (already synced) temporary file over its final name and syncs the directory.
    pub fn commit(&self) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated and relative to the same directory descriptor.
        cvt(unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                self.temp.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
            )
        })?;
        // SAFETY: fsync on a descriptor owned here.
        unsafe { libc::fsync(self.dir.as_raw_fd()) };
        Ok(())
    }

    /// Removes the temporary file.
    pub fn abort(&self) {
        // SAFETY: `temp` is NUL-terminated; relative to the directory descriptor owned here.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.temp.as_ptr(), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn links_fifos_and_devices_are_refused_and_files_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("region");
        std::fs::create_dir_all(root.join("c/b")).unwrap();
        let outside = t.path().join("victim");
        std::fs::write(&outside, b"secret").unwrap();
        let r = Confined::new(&root);

        let (mut f, pending) = r.create("c/b/x.rdb").unwrap().into_parts();
        f.write_all(b"hello").unwrap();
        pending.commit().unwrap();
        let mut got = String::new();
        r.open("c/b/x.rdb")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "hello");
        assert_eq!(r.size("c/b/x.rdb").unwrap(), 5);

        // A link to a file outside, at the final name and as a directory on the way.
        std::os::unix::fs::symlink(&outside, root.join("c/b/link.rdb")).unwrap();
        let e = r.open("c/b/link.rdb").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(r.size("c/b/link.rdb").is_err());
        std::os::unix::fs::symlink(t.path(), root.join("c/up")).unwrap();
        assert!(r.open("c/up/victim").is_err());
        assert!(r.create("c/up/victim").is_err());
        assert!(!r.dir_inside("c/up"));
        // Writing over a link replaces the link; the file it pointed at keeps its bytes.
        let (mut f, pending) = r.create("c/b/link.rdb").unwrap().into_parts();
        f.write_all(b"new").unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
        // A link planted as the temporary name is removed, not written through.
        std::os::unix::fs::symlink(&outside, root.join("c/b/y.rdb.partial")).unwrap();
        let (mut f, pending) = r.create("c/b/y.rdb").unwrap().into_parts();
        f.write_all(b"y").unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");

        // A FIFO is refused at once, not waited on.
        let fifo = CString::new(root.join("c/b/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path in a temporary directory.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = r.open("c/b/fifo").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");

        // Removal takes empty directories with it, and never a link's target.
        r.remove("c/b/link.rdb").unwrap();
        r.remove("c/b/x.rdb").unwrap();
        r.remove("c/b/y.rdb").unwrap();
        r.remove("c/b/fifo").unwrap();
        assert!(!root.join("c/b").exists());
        r.remove("c/up").unwrap();
        assert!(outside.exists());
        r.remove("c/nothing/here").unwrap();
    }
}
