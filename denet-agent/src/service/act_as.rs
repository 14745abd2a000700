//! Acting as the caller: a job's process takes the caller's uid, gid and groups
//! before it runs anything (so it holds no capability), and a path the caller named is
//! looked at with the caller's file-system identity, never with the service's.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::identity::Identity;

/// Everything the child needs to become the caller, prepared before the fork (the
/// child may only make async-signal-safe calls).
pub struct Become {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    cwd: CString,
    /// The service is the caller already (root's jobs, or a service run by a user):
    /// nothing to switch.
    same: bool,
}

impl Become {
    pub fn new(who: &Identity, cwd: &Path) -> std::io::Result<Become> {
        let cwd = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the working directory contains a NUL byte"))?;
        Ok(Become {
            uid: who.uid,
            gid: who.gid,
            groups: who.groups.clone(),
            cwd,
            same: nix::unistd::geteuid().as_raw() == who.uid,
        })
    }

    /// In the child, between fork and exec: groups, then gid, then uid (a uid change
    /// away from root drops every capability), then the working directory, entered
    /// as the caller so it is the caller's own permission that is checked.
    ///
    /// # Safety
    /// Only async-signal-safe calls: call it from a `pre_exec` hook.
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain syscalls with pointers into data prepared before the fork.
        unsafe {
            if !self.same {
                check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
                check(libc::setgid(self.gid))?;
                check(libc::setuid(self.uid))?;
            }
            check(libc::chdir(self.cwd.as_ptr()))
        }
    }
}

/// Runs `f` on a short-lived thread whose file-system identity (fsuid, fsgid and
/// supplementary groups, which Linux keeps per thread) is the caller's, so a path the
/// caller named is checked with the caller's rights, not root's. The thread ends
/// with `f`, and its credentials with it.
pub fn with_fs_identity<T: Send + 'static>(
    who: &Identity,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    if nix::unistd::geteuid().as_raw() == who.uid {
        return Ok(f());
    }
    let who = who.clone();
    std::thread::Builder::new()
        .name("denet-as-user".into())
        .spawn(move || -> std::io::Result<T> {
            set_thread_fs_identity(who.uid, who.gid, &who.groups)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the thread acting as the caller panicked"))?
}

/// Gives the calling thread (only) the file-system identity `uid`, `gid` and
/// supplementary `groups`: every path it opens from now on is checked with those
/// rights. Root gets its own back with `(0, 0, &[0])`.
pub fn set_thread_fs_identity(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    // Raw syscalls: the libc wrappers of setgroups would change every thread of
    // the process; the raw calls change this thread only.
    // SAFETY: plain syscalls on this thread's own credentials.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // setfsuid reports the previous value, never an error: check it took.
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) != i64::from(uid)
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) != i64::from(gid)
        {
            return Err(std::io::Error::other(
                "could not take the caller's file-system identity",
            ));
        }
    }
    Ok(())
}

/// Is `dir` a directory the caller may enter? Checked as the caller.
pub fn check_cwd(who: &Identity, dir: PathBuf) -> Result<(), String> {
    let shown = dir.display().to_string();
    let answer = with_fs_identity(who, move || {
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
        // SAFETY: a zeroed stat is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: stat into a local with a valid C string.
        if unsafe { libc::stat(c.as_ptr(), &mut st) } < 0 {
            return Err(nix::errno::Errno::last_raw());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        // access() checks the real uid, faccessat(AT_EACCESS) the effective one, and
        // neither is the fsuid: search permission on the directory itself is proved
        // by resolving "." inside it.
        let dot =
            CString::new([dir.as_os_str().as_bytes(), b"/."].concat()).map_err(|_| libc::EINVAL)?;
        // SAFETY: open/close with a valid C string.
        let fd = unsafe { libc::open(dot.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
        if fd < 0 {
            return Err(nix::errno::Errno::last_raw());
        }
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
        Ok(())
    })
    .map_err(|e| format!("{shown}: {e}"))?;
    answer.map_err(|errno| format!("{shown}: {}", std::io::Error::from_raw_os_error(errno)))
}
