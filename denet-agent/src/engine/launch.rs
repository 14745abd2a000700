//! Starts the command held before it executes.
//!
//! `std::process::Command::spawn` returns only after the child has exec'd, so it
//! cannot hold a child. We fork ourselves: the child blocks on a gate pipe until the
//! agent has put its pid into the kernel's tracked set, then execs. A close-on-exec
//! error pipe reports a failed exec back (EOF means the exec succeeded).

use std::{
    ffi::{CString, OsStr},
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::PathBuf,
    sync::Arc,
};

use nix::{
    errno::Errno,
    unistd::{fork, ForkResult, Pid},
};

/// Exit status used when the command cannot be found (as in POSIX shells).
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit status used when the command exists but cannot be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{program}: cannot execute: {errno}")]
    NotExecutable { program: String, errno: Errno },
    #[error("{program}: exec failed: {errno}")]
    ExecFailed { program: String, errno: Errno },
    #[error("empty command")]
    EmptyCommand,
    #[error("argument contains a NUL byte: {0:?}")]
    NulInArgument(String),
    #[error("cannot open {path} for {what}: {source}")]
    Redirect {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
}

impl LaunchError {
    /// The exit status a shell would report for this failure.
    pub fn exit_status(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) => EXIT_NOT_FOUND,
            LaunchError::ExecFailed { errno, .. } if *errno == Errno::ENOENT => EXIT_NOT_FOUND,
            LaunchError::NotExecutable { .. } | LaunchError::ExecFailed { .. } => {
                EXIT_NOT_EXECUTABLE
            }
            _ => EXIT_NOT_FOUND,
        }
    }
}

/// Where one of the command's output streams goes.
#[derive(Debug, Clone)]
pub enum Redirect {
    /// A file, created or truncated.
    Path(PathBuf),
    /// An open descriptor handed to the agent (a pipe from `serve`).
    Fd(Arc<OwnedFd>),
}

/// What to run and where its standard streams go.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    /// `None`: inherit the agent's stdout.
    pub stdout: Option<Redirect>,
    /// `None`: inherit the agent's stderr.
    pub stderr: Option<Redirect>,
    /// Working directory of the command (`None`: the agent's).
    pub cwd: Option<PathBuf>,
    /// Full environment of the command (`None`: the agent's).
    pub env: Option<Vec<(String, String)>>,
    /// Variables the agent adds to that environment (set over any of the same name).
    pub extra_env: Vec<(String, String)>,
}

/// A forked child blocked before exec.
pub struct HeldChild {
    pid: Pid,
    program: String,
    gate: Option<OwnedFd>,
    exec_error: OwnedFd,
}

/// The OOM score adjustment the agent gives itself once the command is forked.
///
/// On a machine-wide OOM the kernel should kill the biggest task, never the small
/// agent that has to report the kill. -999 rather than -1000: as a last resort the
/// kernel may still take it.
pub const AGENT_OOM_SCORE_ADJ: i32 = -999;

/// Makes the agent the OOM killer's last choice. Called after the fork, so the
/// command and its descendants keep the score the caller had: they gain nothing.
/// Lowering needs CAP_SYS_RESOURCE; without it (an ordinary user) nothing changes.
pub fn shield_agent_from_oom_killer() -> bool {
    std::fs::write("/proc/self/oom_score_adj", AGENT_OOM_SCORE_ADJ.to_string()).is_ok()
}

/// Finds `program` the way execvp would, so "not found" and "not executable" can be
/// told apart before forking.
pub fn resolve_program(program: &str) -> Result<PathBuf, LaunchError> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .collect()
    };
    let mut found_not_executable = None;
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(candidate)
            }
            Ok(meta) => {
                let errno = if meta.is_dir() {
                    Errno::EISDIR
                } else {
                    Errno::EACCES
                };
                found_not_executable.get_or_insert(errno);
            }
            Err(_) => {}
        }
    }
    match found_not_executable {
        Some(errno) => Err(LaunchError::NotExecutable {
            program: program.to_string(),
            errno,
        }),
        None => Err(LaunchError::NotFound(program.to_string())),
    }
}

fn cstring(s: &[u8]) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::NulInArgument(String::from_utf8_lossy(s).into_owned()))
}

fn open_redirect(to: &Redirect, what: &'static str) -> Result<File, LaunchError> {
    match to {
        Redirect::Path(path) => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path),
        // A close-on-exec duplicate, like an opened file.
        Redirect::Fd(fd) => fd.try_clone().map(File::from),
    }
    .map_err(|source| LaunchError::Redirect {
        what,
        path: match to {
            Redirect::Path(p) => p.clone(),
            Redirect::Fd(fd) => PathBuf::from(format!("/dev/fd/{}", fd.as_raw_fd())),
        },
        source,
    })
}

/// The command's `KEY=VALUE` environment, or `None` to pass on the agent's as is.
/// The agent's own variables are taken as bytes: no lossy conversion.
fn command_env(spec: &LaunchSpec) -> Result<Option<Vec<CString>>, LaunchError> {
    let overridden = |key: &[u8]| spec.extra_env.iter().any(|(k, _)| k.as_bytes() == key);
    let mut vars: Vec<Vec<u8>> = match &spec.env {
        Some(vars) => vars
            .iter()
            .filter(|(k, _)| !overridden(k.as_bytes()))
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect(),
        None if spec.extra_env.is_empty() => return Ok(None),
        None => std::env::vars_os()
            .filter(|(k, _)| !overridden(k.as_bytes()))
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect(),
    };
    vars.extend(
        spec.extra_env
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes()),
    );
    vars.iter()
        .map(|v| cstring(v))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn pipe_cloexec(what: &'static str) -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| LaunchError::Sys { what, errno })
}

impl HeldChild {
    /// Forks a child that waits on a gate before exec'ing `spec.argv`.
    pub fn spawn(spec: &LaunchSpec) -> Result<Self, LaunchError> {
        let program = spec.argv.first().ok_or(LaunchError::EmptyCommand)?.clone();
        let resolved = resolve_program(&program)?;
        // Everything the child needs is allocated here: after fork it may only make
        // async-signal-safe calls.
        let path = cstring(resolved.as_os_str().as_bytes())?;
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env = command_env(spec)?;
        let cwd = match &spec.cwd {
            Some(dir) => Some(cstring(OsStr::as_bytes(dir.as_os_str()))?),
            None => None,
        };
        let stdout = spec
            .stdout
            .as_ref()
            .map(|p| open_redirect(p, "stdout"))
            .transpose()?;
        let stderr = spec
            .stderr
            .as_ref()
            .map(|p| open_redirect(p, "stderr"))
            .transpose()?;
        let (gate_r, gate_w) = pipe_cloexec("gate pipe")?;
        let (err_r, err_w) = pipe_cloexec("exec error pipe")?;

        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let env_ptrs: Option<Vec<*const libc::c_char>> = env.as_ref().map(|vars| {
            let mut v: Vec<_> = vars.iter().map(|e| e.as_ptr()).collect();
            v.push(std::ptr::null());
            v
        });

        // SAFETY: the child branch only calls async-signal-safe functions (read,
        // dup2, chdir, sigprocmask, signal, execv(e), write, _exit) on data prepared above.
        match unsafe { fork() }.map_err(|errno| LaunchError::Sys {
            what: "fork",
            errno,
        })? {
            // SAFETY: in the child of a fork, only async-signal-safe work follows (child_after_fork).
            ForkResult::Child => unsafe {
                child_after_fork(ChildSetup {
                    gate_r: gate_r.as_raw_fd(),
                    gate_w: gate_w.as_raw_fd(),
                    err_w: err_w.as_raw_fd(),
                    stdout: stdout.as_ref().map(|f| f.as_raw_fd()),
                    stderr: stderr.as_ref().map(|f| f.as_raw_fd()),
                    cwd: cwd.as_ref().map(|c| c.as_ptr()),
                    path: path.as_ptr(),
                    argv: argv_ptrs.as_ptr(),
                    envp: env_ptrs.as_ref().map(|e| e.as_ptr()),
                })
            },
            ForkResult::Parent { child } => {
                drop(gate_r);
                drop(err_w);
                Ok(HeldChild {
                    pid: child,
                    program,
                    gate: Some(gate_w),
                    exec_error: err_r,
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Lets the child exec. Returns once the exec has succeeded or failed.
    pub fn release(mut self) -> Result<(), LaunchError> {
        if let Some(gate) = self.gate.take() {
            let mut file = File::from(gate);
            // A failed write means the child is already gone; the error pipe tells why.
            let _ = std::io::Write::write_all(&mut file, b"go");
        }
        let mut buf = [0u8; 4];
        let mut file = File::from(self.exec_error);
        match std::io::Read::read(&mut file, &mut buf) {
            Ok(4) => {
                let errno = Errno::from_raw(i32::from_ne_bytes(buf));
                Err(match errno {
                    Errno::ENOENT => LaunchError::NotFound(self.program),
                    Errno::EACCES | Errno::ENOEXEC | Errno::EPERM | Errno::EISDIR => {
                        LaunchError::NotExecutable {
                            program: self.program,
                            errno,
                        }
                    }
                    errno => LaunchError::ExecFailed {
                        program: self.program,
                        errno,
                    },
                })
            }
            // EOF: the close-on-exec pipe closed because exec succeeded.
            _ => Ok(()),
        }
    }
}

struct ChildSetup {
    gate_r: i32,
    gate_w: i32,
    err_w: i32,
    stdout: Option<i32>,
    stderr: Option<i32>,
    cwd: Option<*const libc::c_char>,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: Option<*const *const libc::c_char>,
}

/// Runs in the forked child. Never returns.
unsafe fn child_after_fork(s: ChildSetup) -> ! {
    // SAFETY: the caller is the forked child; see ChildSetup for what it may touch.
    unsafe {
        let fail = |errno: i32| -> ! {
            let bytes = errno.to_ne_bytes();
            libc::write(s.err_w, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(if errno == libc::ENOENT {
                EXIT_NOT_FOUND
            } else {
                EXIT_NOT_EXECUTABLE
            })
        };
        // Our copy of the write end must go, so an agent that dies makes the read
        // below return EOF instead of blocking forever.
        libc::close(s.gate_w);
        let mut buf = [0u8; 2];
        let n = loop {
            let n = libc::read(s.gate_r, buf.as_mut_ptr().cast(), buf.len());
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if n <= 0 {
            // The agent went away before releasing us: never run untraced.
            libc::_exit(EXIT_NOT_FOUND);
        }
        libc::close(s.gate_r);
        // Undo what the agent changed for itself, as std::process does: Rust ignores
        // SIGPIPE. Caught signals (tokio's handlers) reset to default on exec anyway,
        // while signals the agent inherited as ignored stay ignored.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if let Some(fd) = s.stdout {
            if libc::dup2(fd, 1) < 0 {
                fail(*libc::__errno_location());
            }
        }
        if let Some(fd) = s.stderr {
            if libc::dup2(fd, 2) < 0 {
                fail(*libc::__errno_location());
            }
        }
        if let Some(dir) = s.cwd {
            if libc::chdir(dir) < 0 {
                fail(*libc::__errno_location());
            }
        }
        match s.envp {
            Some(envp) => libc::execve(s.path, s.argv, envp),
            None => libc::execv(s.path, s.argv),
        };
        fail(*libc::__errno_location())
    }
}
