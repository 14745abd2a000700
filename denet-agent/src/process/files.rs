//! Turns the kernel's file open/close events into `file` records: which files each
//! process read and wrote, and how much.
//!
//! Paths: the kernel sends the path as passed to open. Absolute paths are used as
//! they are (lexically normalised); relative ones are joined with the directory they
//! are relative to: the process's working directory, followed from the command's
//! start through every fork, chdir and fchdir the kernel reports, or the directory
//! fd (read from /proc).

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
};

use denet_common::{
    FileCloseEvent, FileDupEvent, FileOpenEvent, FileStats, CLOSE_BY_REOPEN, FILE_INHERIT_FDS,
    FILE_PATH_TRUNCATED,
};

use super::tracker::c_string;
use crate::trace::FileRecord;

const AT_FDCWD: i32 = -100;

#[derive(Debug, Clone)]
struct OpenFile {
    /// Not opened by this process on this fd: inherited at fork or duplicated.
    inherited: bool,
    path: String,
    path_source: &'static str,
    path_truncated: bool,
    open_flags: u32,
    open_boot_ns: u64,
}

#[derive(Debug, Default)]
pub struct FileTracker {
    open: HashMap<(u32, u32), OpenFile>,
    /// Last known working directory per process.
    cwd: HashMap<u32, String>,
}

/// Removes `.` and resolves `..` lexically (symlinks are not followed).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn readlink(path: String) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The first `len` bytes of a NUL-terminated kernel buffer.
fn c_str(bytes: &[u8], len: usize) -> String {
    c_string(&bytes[..len.min(bytes.len())])
}

impl FileTracker {
    pub fn set_cwd(&mut self, pid: u32, cwd: String) {
        self.cwd.insert(pid, cwd);
    }

    /// A fork inherits its parent's working directory and open files (the kernel
    /// gives it counters of its own for the fds below `FILE_INHERIT_FDS`).
    pub fn on_fork(&mut self, parent: u32, child: u32, fork_ns: u64) {
        if let Some(cwd) = self.cwd.get(&parent).cloned() {
            self.cwd.insert(child, cwd);
        }
        let inherited: Vec<(u32, OpenFile)> = self
            .open
            .iter()
            .filter(|((p, fd), _)| *p == parent && *fd < FILE_INHERIT_FDS)
            .map(|((_, fd), f)| (*fd, f.clone()))
            .collect();
        for (fd, mut f) in inherited {
            f.open_boot_ns = fork_ns;
            f.inherited = true;
            self.open.insert((child, fd), f);
        }
    }

    /// `fd` now refers to the same file as `old_fd`.
    pub fn on_dup(&mut self, ev: &FileDupEvent) {
        let pid = ev.header.tgid;
        if let Some(mut f) = self.open.get(&(pid, ev.old_fd)).cloned() {
            f.open_boot_ns = ev.header.ts_ns;
            f.inherited = true;
            self.open.insert((pid, ev.fd), f);
        }
    }

    /// A chdir (path relative to the old working directory) or fchdir (an fd).
    pub fn on_chdir(&mut self, ev: &FileOpenEvent) {
        let pid = ev.header.tgid;
        let new = if ev.path_len > 0 {
            let raw = c_str(&ev.path, ev.path_len as usize);
            if raw.starts_with('/') {
                Some(normalize(Path::new(&raw)))
            } else {
                self.cwd
                    .get(&pid)
                    .map(|cwd| normalize(&Path::new(cwd).join(&raw)))
            }
        } else {
            self.open.get(&(pid, ev.fd)).map(|f| PathBuf::from(&f.path))
        };
        match new {
            Some(dir) => {
                self.cwd.insert(pid, dir.to_string_lossy().into_owned());
            }
            // Unknown base: ask /proc while the process still runs.
            None => match readlink(format!("/proc/{pid}/cwd")) {
                Some(cwd) => {
                    self.cwd.insert(pid, cwd);
                }
                None => {
                    self.cwd.remove(&pid);
                }
            },
        }
    }

    fn resolve(&mut self, pid: u32, raw: &str, dirfd: i32) -> (String, &'static str) {
        if raw.starts_with('/') {
            return (
                normalize(Path::new(raw)).to_string_lossy().into_owned(),
                "absolute",
            );
        }
        let (base, source) = if dirfd == AT_FDCWD {
            let cwd = self
                .cwd
                .get(&pid)
                .cloned()
                .or_else(|| readlink(format!("/proc/{pid}/cwd")));
            (cwd, "cwd")
        } else {
            (readlink(format!("/proc/{pid}/fd/{dirfd}")), "dirfd")
        };
        match base {
            Some(base) => (
                normalize(&Path::new(&base).join(raw))
                    .to_string_lossy()
                    .into_owned(),
                source,
            ),
            None => (raw.to_string(), "relative"),
        }
    }

    /// An open. (A previous file on the same fd was closed out by the kernel with
    /// a close event of its own, which arrives before this one.)
    pub fn on_open(&mut self, ev: &FileOpenEvent) {
        let pid = ev.header.tgid;
        let raw = c_str(&ev.path, ev.path_len as usize);
        let (path, path_source) = self.resolve(pid, &raw, ev.dirfd);
        self.open.insert(
            (pid, ev.fd),
            OpenFile {
                inherited: false,
                path,
                path_source,
                path_truncated: ev.flags & FILE_PATH_TRUNCATED != 0,
                open_flags: ev.open_flags,
                open_boot_ns: ev.header.ts_ns,
            },
        );
    }

    pub fn on_close(&mut self, ev: &FileCloseEvent) -> Option<FileRecord> {
        let file = self.open.remove(&(ev.header.tgid, ev.fd))?;
        let closed_by = if ev.reason == CLOSE_BY_REOPEN {
            "reopen"
        } else {
            "close"
        };
        Some(record(
            ev.header.tgid,
            ev.fd,
            file,
            &ev.stats,
            Some(ev.header.ts_ns),
            closed_by,
        ))
    }

    /// Files a process still had open when it exited; `take` fetches their final
    /// counters from the kernel.
    pub fn on_exit(
        &mut self,
        pid: u32,
        end_ns: Option<u64>,
        mut take: impl FnMut(u32) -> Option<FileStats>,
    ) -> Vec<FileRecord> {
        self.cwd.remove(&pid);
        let fds: Vec<u32> = self
            .open
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, fd)| *fd)
            .collect();
        let mut out = Vec::with_capacity(fds.len());
        for fd in fds {
            if let Some(file) = self.open.remove(&(pid, fd)) {
                let stats = take(fd).unwrap_or_default();
                out.push(record(pid, fd, file, &stats, end_ns, "exit"));
            }
        }
        out.sort_by_key(|r| r.fd);
        out
    }
}

fn record(
    pid: u32,
    fd: u32,
    f: OpenFile,
    s: &FileStats,
    close_ns: Option<u64>,
    closed_by: &'static str,
) -> FileRecord {
    const O_ACCMODE: u32 = 0o3;
    const O_CREAT: u32 = 0o100;
    FileRecord {
        pid: Some(pid),
        fd: Some(fd),
        path: Some(f.path),
        path_source: Some(f.path_source.into()),
        path_truncated: Some(f.path_truncated),
        open_flags: Some(f.open_flags.into()),
        access: Some(
            match f.open_flags & O_ACCMODE {
                0 => "r",
                1 => "w",
                _ => "rw",
            }
            .into(),
        ),
        created: Some(f.open_flags & O_CREAT != 0 && !f.inherited),
        inherited: Some(f.inherited),
        read_bytes: Some(s.read_bytes),
        write_bytes: Some(s.write_bytes),
        reads: Some(s.reads),
        writes: Some(s.writes),
        open_boot_ns: Some(f.open_boot_ns),
        close_boot_ns: close_ns,
        closed_by: Some(closed_by.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn relative_paths_use_the_known_cwd() {
        let mut t = FileTracker::default();
        // A pid that does not exist: /proc cannot be read, the inherited cwd is used.
        let pid = u32::MAX - 7;
        t.set_cwd(pid, "/data/run".into());
        t.on_fork(pid, pid - 1, 0);
        assert_eq!(
            t.resolve(pid - 1, "in/reads.fq", AT_FDCWD),
            ("/data/run/in/reads.fq".into(), "cwd")
        );
        assert_eq!(
            t.resolve(pid - 1, "/abs/../x", AT_FDCWD),
            ("/x".into(), "absolute")
        );
        assert_eq!(
            t.resolve(pid - 2, "rel", AT_FDCWD),
            ("rel".into(), "relative")
        );
    }
}
