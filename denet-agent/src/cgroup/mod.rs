//! A cgroup per run: the command is put in it while it is held before exec, so
//! nothing it does escapes it. It gives the tree's exact memory peak (page cache
//! included), the limits a run asks for, and the kernel's own OOM-kill count.
//!
//! cgroup v1 where its controllers are mounted (`v1`, as on this project's
//! machines), else cgroup v2 (`v2`, the default of modern distributions). The run's
//! cgroup is made inside the cgroup the command would have been in (the agent's, or
//! the node daemon's caller's), so a manager's limits (a Slurm step, a container)
//! still hold.

mod v1;
mod v2;

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const ROOT: &str = "/sys/fs/cgroup";
/// CFS period for `--cpus` (the kernel's default, 100 ms).
const CFS_PERIOD_US: u64 = 100_000;

/// What a run may use; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPUs' worth of time per period (a CFS quota), e.g. 1.5.
    pub cpus: Option<f64>,
    pub max_pids: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.cpus.is_some() || self.max_pids.is_some()
    }
}

/// The CFS quota of `cpus` CPUs per period, at least 1 ms.
fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000)
}

/// What the cgroup counted, read at the end of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// The peak of the whole cgroup, page cache included (v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub memory_peak_bytes: Option<u64>,
    /// The memory limit the cgroup had (None: unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Processes of this cgroup the kernel's OOM killer killed, for any reason (v1
    /// `memory.oom_control`, v2 `memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Whether the cgroup's own memory limit was reached (v2 `memory.events` `oom`;
    /// v1: the peak came within 1 MiB of the limit): tells an OOM kill at the run's
    /// limit from one by the machine (or a cgroup around the run) running out.
    pub limit_reached: Option<bool>,
    /// CPU time of every task ever in the cgroup, ns (v1 `cpuacct.usage`, v2
    /// `cpu.stat` `usage_usec`).
    pub cpu_ns: Option<u64>,
    /// Bytes read from and written to block devices by the cgroup's tasks, summed
    /// over devices (v1 `blkio.throttle.io_service_bytes`, v2 `io.stat`).
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy: neither v1's memory controller at {ROOT}/memory nor a cgroup v2 root at {ROOT}")]
    NoHierarchy,
    #[error("the cgroup v2 memory controller is not available in {0}")]
    NoMemoryController(PathBuf),
    #[error(
        "cgroup {0} holds processes of its own, so cgroup v2 lets it give its children \
         no controllers (a manager's cgroup: a login scope, a Slurm task, a container)"
    )]
    NotDelegated(PathBuf),
    #[error("process {pid} is in no {controller} cgroup")]
    NotInCgroup { pid: u32, controller: &'static str },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid limit: {0}")]
    Invalid(String),
}

impl CgroupError {
    /// The caller may not create cgroups here (not root, or a manager's cgroup):
    /// the run reads the cgroup it is in instead.
    pub fn not_ours(&self) -> bool {
        match self {
            CgroupError::NotDelegated(_) => true,
            CgroupError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ),
            _ => false,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err("writing", path))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes an empty cgroup directory, waiting briefly: the kernel may take a moment
/// to let go of a memory cgroup whose last task just exited.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while dir.exists() {
        match std::fs::remove_dir(dir) {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
}

#[derive(Debug)]
enum Hierarchy {
    V1(v1::Dirs),
    V2(PathBuf),
}

fn hierarchy_in_use() -> Result<u8, CgroupError> {
    if v1::mounted() {
        Ok(1)
    } else if v2::mounted() {
        Ok(2)
    } else {
        Err(CgroupError::NoHierarchy)
    }
}

/// The run's cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    at: Hierarchy,
    pub limits: Limits,
    /// Made for the run (and removed after it); false: the cgroup the run was left
    /// in, a manager's, only read.
    pub own: bool,
}

impl RunCgroup {
    /// Makes cgroup `name` inside `parent_pid`'s cgroup, with `limits`.
    pub fn create(name: &str, parent_pid: u32, limits: Limits) -> Result<RunCgroup, CgroupError> {
        let version = hierarchy_in_use()?;
        if let Some(cpus) = limits.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(CgroupError::Invalid(format!("cpus {cpus}")));
            }
        }
        let at = if version == 1 {
            Hierarchy::V1(v1::create(name, parent_pid)?)
        } else {
            Hierarchy::V2(v2::create(name, parent_pid)?)
        };
        let cg = RunCgroup {
            at,
            limits,
            own: true,
        };
        let applied = match &cg.at {
            Hierarchy::V1(dirs) => v1::apply_limits(dirs, &limits),
            Hierarchy::V2(dir) => v2::apply_limits(dir, &limits),
        };
        if let Err(e) = applied {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The cgroup `pid` is in, to read, not to change: where a run may not make one
    /// (a manager owns it), what it counts still covers the run.
    pub fn enclosing(pid: u32) -> Result<RunCgroup, CgroupError> {
        let (at, memory_bytes) = if hierarchy_in_use()? == 1 {
            let dirs = v1::of_pid(pid)?;
            let limit = v1::memory_limit(&dirs);
            (Hierarchy::V1(dirs), limit)
        } else {
            let dir = v2::of_pid(pid)?;
            let limit = v2::memory_limit(&dir);
            (Hierarchy::V2(dir), limit)
        };
        Ok(RunCgroup {
            at,
            limits: Limits {
                memory_bytes,
                ..Limits::default()
            },
            own: false,
        })
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self.at {
            Hierarchy::V1(_) => 1,
            Hierarchy::V2(_) => 2,
        }
    }

    fn procs_dirs(&self) -> Vec<&Path> {
        let mut seen: Vec<&Path> = Vec::new();
        let all: Vec<&Path> = match &self.at {
            Hierarchy::V1(dirs) => dirs.iter().map(|(_, d)| d.as_path()).collect(),
            Hierarchy::V2(dir) => vec![dir.as_path()],
        };
        for d in all {
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
        seen
    }

    /// Each hierarchy's `cgroup.procs`, open for writing: a child writes "0" to them
    /// between fork and exec to enter the cgroup itself (no path needed then).
    pub fn procs_files(&self) -> Result<Vec<std::fs::File>, CgroupError> {
        self.procs_dirs()
            .into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))
            })
            .collect()
    }

    /// Moves `pid` (the held command) into the cgroup of every hierarchy.
    pub fn enter(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.procs_dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The memory cgroup's path (for the header).
    pub fn memory_path(&self) -> String {
        match &self.at {
            Hierarchy::V1(dirs) => v1::dir(dirs, "memory")
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            Hierarchy::V2(dir) => dir.display().to_string(),
        }
    }

    pub fn usage(&self) -> Usage {
        match &self.at {
            Hierarchy::V1(dirs) => v1::usage(dirs, &self.limits),
            Hierarchy::V2(dir) => v2::usage(dir, &self.limits),
        }
    }

    /// Removes the cgroup once its tasks are gone; a cgroup not ours is left alone.
    pub fn remove(&self) {
        if !self.own {
            return;
        }
        match &self.at {
            Hierarchy::V1(dirs) => v1::remove(dirs),
            Hierarchy::V2(dir) => remove_dir(dir),
        }
    }
}

/// Most processes a limit may allow (the kernel's largest pid_max).
pub const MAX_PIDS_LIMIT: u64 = 4_194_304;

/// A CPU quota a run may ask for, in CPUs.
pub fn check_cpus(c: f64) -> Result<f64, String> {
    if c.is_finite() && (0.01..=4096.0).contains(&c) {
        Ok(c)
    } else {
        Err(format!("a number of CPUs in [0.01, 4096], got {c}"))
    }
}

/// Parses a size like `4G`, `512M`, `100k` or a plain byte count (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a size (e.g. 4G, 512M, 1048576)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: must be more than 0"));
    }
    let bytes = n * mult as f64;
    if bytes < 1024.0 * 1024.0 {
        return Err(format!("{s:?}: at least 1 MiB"));
    }
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("{s:?}: too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_refused() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in ["", "x", "4Q", "-1G", "0", "100k", "nan", "1e30T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
