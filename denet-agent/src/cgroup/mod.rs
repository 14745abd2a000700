//! A cgroup per run: the command is put in it while it is held before exec, so
//! nothing it does escapes it. It gives the tree's exact memory peak (page cache
//! included), the limits a run asks for, and the kernel's own OOM-kill count.
//!
//! cgroup v1 (the memory, pids, cpu and cpuacct controllers mounted under
//! /sys/fs/cgroup/<controller>), as on this project's machines. The run's cgroup is
//! made inside the cgroup the command would have been in (the agent's, or the node
//! daemon's caller's), so a manager's limits (a Slurm step, a container) still hold.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "blkio"];
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

/// What the cgroup counted, read at the end of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// `memory.max_usage_in_bytes`: the peak of the whole cgroup, page cache included.
    pub memory_peak_bytes: Option<u64>,
    /// The memory limit the cgroup had (None: unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// OOM kills the kernel did because this cgroup reached its limit
    /// (`memory.oom_control` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// `cpuacct.usage`: CPU time of every task ever in the cgroup, ns.
    pub cpu_ns: Option<u64>,
    /// Bytes read from and written to block devices by the cgroup's tasks
    /// (`blkio.throttle.io_service_bytes`, summed over devices).
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v1 memory controller at {ROOT}/memory (cgroup v2 is not supported yet)")]
    NoV1,
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
    /// The caller may not create cgroups here (not root, or a manager's cgroup).
    pub fn is_permission(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem))
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The path of `pid`'s cgroup in `controller`'s hierarchy, from /proc/PID/cgroup.
fn cgroup_of(pid: u32, controller: &'static str) -> Result<String, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&file).map_err(io_err("reading", &file))?;
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .ok_or(CgroupError::NotInCgroup { pid, controller })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err("writing", path))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The run's cgroup: one directory per controller.
#[derive(Debug)]
pub struct RunCgroup {
    dirs: Vec<(&'static str, PathBuf)>,
    pub limits: Limits,
    /// Made for the run (and removed after it); false: the cgroup the run was left
    /// in, a manager's, only read.
    pub own: bool,
}

impl RunCgroup {
    /// Makes cgroup `name` inside `parent_pid`'s cgroups, with `limits`.
    pub fn create(name: &str, parent_pid: u32, limits: Limits) -> Result<RunCgroup, CgroupError> {
        if !Path::new(ROOT)
            .join("memory/memory.limit_in_bytes")
            .exists()
        {
            return Err(CgroupError::NoV1);
        }
        if let Some(cpus) = limits.cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(CgroupError::Invalid(format!("cpus {cpus}")));
            }
        }
        let mut cg = RunCgroup {
            dirs: Vec::new(),
            limits,
            own: true,
        };
        for controller in CONTROLLERS {
            let parent = Path::new(ROOT)
                .join(controller)
                .join(cgroup_of(parent_pid, controller)?.trim_start_matches('/'));
            let dir = parent.join(name);
            // cpu and cpuacct may be one hierarchy (cpu,cpuacct): one directory.
            if cg.dirs.iter().any(|(_, d)| same_dir(d, &dir)) {
                cg.dirs.push((controller, dir));
                continue;
            }
            if let Err(e) = std::fs::create_dir(&dir) {
                // Undo what was made: the caller gets the first error.
                cg.remove();
                return Err(io_err("creating", &dir)(e));
            }
            cg.dirs.push((controller, dir));
        }
        if let Err(e) = cg.apply_limits() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The cgroup `pid` is in, to read, not to change: where a run may not make one
    /// (a manager owns it), what it counts still covers the run.
    pub fn enclosing(pid: u32) -> Result<RunCgroup, CgroupError> {
        if !Path::new(ROOT)
            .join("memory/memory.limit_in_bytes")
            .exists()
        {
            return Err(CgroupError::NoV1);
        }
        let mut dirs = Vec::new();
        for controller in CONTROLLERS {
            let dir = Path::new(ROOT)
                .join(controller)
                .join(cgroup_of(pid, controller)?.trim_start_matches('/'));
            dirs.push((controller, dir));
        }
        let limit = dirs
            .iter()
            .find(|(c, _)| *c == "memory")
            .and_then(|(_, d)| read_u64(&d.join("memory.limit_in_bytes")))
            // v1 reports "no limit" as a huge page-rounded number.
            .filter(|&b| b < (1 << 62));
        Ok(RunCgroup {
            dirs,
            limits: Limits {
                memory_bytes: limit,
                ..Limits::default()
            },
            own: false,
        })
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    fn apply_limits(&self) -> Result<(), CgroupError> {
        if let (Some(bytes), Some(dir)) = (self.limits.memory_bytes, self.dir("memory")) {
            write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // With swap accounting, swap may not be a way around the limit.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
        if let (Some(n), Some(dir)) = (self.limits.max_pids, self.dir("pids")) {
            write(&dir.join("pids.max"), &n.to_string())?;
        }
        if let (Some(cpus), Some(dir)) = (self.limits.cpus, self.dir("cpu")) {
            write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            let quota = ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000);
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(())
    }

    /// Each controller's `cgroup.procs`, open for writing: a child writes "0" to them
    /// between fork and exec to enter the cgroup itself (no path needed then).
    pub fn procs_files(&self) -> Result<Vec<std::fs::File>, CgroupError> {
        let mut seen: Vec<&Path> = Vec::new();
        let mut files = Vec::new();
        for (_, dir) in &self.dirs {
            if seen.contains(&dir.as_path()) {
                continue;
            }
            seen.push(dir);
            let path = dir.join("cgroup.procs");
            files.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))?,
            );
        }
        Ok(files)
    }

    /// Moves `pid` (the held command) into every controller's cgroup.
    pub fn enter(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The memory cgroup's path (for the header).
    pub fn memory_path(&self) -> String {
        self.dir("memory")
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }

    pub fn usage(&self) -> Usage {
        let memory = self.dir("memory");
        let oom_kills = memory.and_then(|d| {
            std::fs::read_to_string(d.join("memory.oom_control"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        });
        Usage {
            memory_peak_bytes: memory.and_then(|d| read_u64(&d.join("memory.max_usage_in_bytes"))),
            memory_limit_bytes: self.limits.memory_bytes,
            oom_kills,
            cpu_ns: self
                .dir("cpuacct")
                .and_then(|d| read_u64(&d.join("cpuacct.usage"))),
            blk_read_bytes: self.blkio("Read"),
            blk_write_bytes: self.blkio("Write"),
        }
    }

    /// `blkio.throttle.io_service_bytes` lines `MAJ:MIN Read N`, summed.
    fn blkio(&self, op: &str) -> Option<u64> {
        let text =
            std::fs::read_to_string(self.dir("blkio")?.join("blkio.throttle.io_service_bytes"))
                .ok()?;
        Some(
            text.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    let (_dev, kind, n) = (w.next()?, w.next()?, w.next()?);
                    (kind == op).then(|| n.parse::<u64>().ok()).flatten()
                })
                .sum(),
        )
    }

    /// Removes the cgroup once its tasks are gone (the kernel may take a moment to
    /// let go of a memory cgroup whose last task just exited).
    pub fn remove(&self) {
        if !self.own {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (_, dir) in self.dirs.iter().rev() {
            while dir.exists() {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (
        a.parent().and_then(|p| p.canonicalize().ok()),
        b.parent().and_then(|p| p.canonicalize().ok()),
    ) {
        (Some(pa), Some(pb)) => pa == pb && a.file_name() == b.file_name(),
        _ => a == b,
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
