//! cgroup v1: the memory, pids, cpu, cpuacct and blkio controllers, each its own
//! hierarchy under /sys/fs/cgroup/<controller>, so a run's cgroup is one directory
//! per controller.

use std::path::{Path, PathBuf};

use super::{io_err, read_u64, write, CgroupError, Limits, Usage, CFS_PERIOD_US, ROOT};

const CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "blkio"];

/// The directory of each controller.
pub(super) type Dirs = Vec<(&'static str, PathBuf)>;

/// v1 is in use where its memory controller is mounted.
pub(super) fn mounted() -> bool {
    Path::new(ROOT)
        .join("memory/memory.limit_in_bytes")
        .exists()
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

/// `pid`'s cgroup directory in every controller.
pub(super) fn of_pid(pid: u32) -> Result<Dirs, CgroupError> {
    CONTROLLERS
        .iter()
        .map(|&c| {
            Ok((
                c,
                Path::new(ROOT)
                    .join(c)
                    .join(cgroup_of(pid, c)?.trim_start_matches('/')),
            ))
        })
        .collect()
}

/// Makes `name` inside `parent_pid`'s cgroup of every controller. On failure what
/// was made is removed and the first error returned.
pub(super) fn create(name: &str, parent_pid: u32) -> Result<Dirs, CgroupError> {
    let mut dirs: Dirs = Vec::new();
    for (controller, parent) in of_pid(parent_pid)? {
        let dir = parent.join(name);
        // cpu and cpuacct may be one hierarchy (cpu,cpuacct): one directory.
        if dirs.iter().any(|(_, d)| same_dir(d, &dir)) {
            dirs.push((controller, dir));
            continue;
        }
        if let Err(e) = std::fs::create_dir(&dir) {
            remove(&dirs);
            return Err(io_err("creating", &dir)(e));
        }
        dirs.push((controller, dir));
    }
    Ok(dirs)
}

pub(super) fn dir<'a>(dirs: &'a Dirs, controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|(c, _)| *c == controller)
        .map(|(_, d)| d.as_path())
}

/// The memory limit of an existing cgroup (v1 reports "none" as a huge number).
pub(super) fn memory_limit(dirs: &Dirs) -> Option<u64> {
    dir(dirs, "memory")
        .and_then(|d| read_u64(&d.join("memory.limit_in_bytes")))
        .filter(|&b| b < (1 << 62))
}

pub(super) fn apply_limits(dirs: &Dirs, limits: &Limits) -> Result<(), CgroupError> {
    if let (Some(bytes), Some(dir)) = (limits.memory_bytes, dir(dirs, "memory")) {
        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        // With swap accounting, swap may not be a way around the limit.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &bytes.to_string())?;
        }
    }
    if let (Some(n), Some(dir)) = (limits.max_pids, dir(dirs, "pids")) {
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    if let (Some(cpus), Some(dir)) = (limits.cpus, dir(dirs, "cpu")) {
        write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
        write(
            &dir.join("cpu.cfs_quota_us"),
            &super::cpu_quota_us(cpus).to_string(),
        )?;
    }
    Ok(())
}

pub(super) fn usage(dirs: &Dirs, limits: &Limits) -> Usage {
    let memory = dir(dirs, "memory");
    let peak = memory.and_then(|d| read_u64(&d.join("memory.max_usage_in_bytes")));
    let oom_kills = memory.and_then(|d| {
        std::fs::read_to_string(d.join("memory.oom_control"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    });
    Usage {
        memory_peak_bytes: peak,
        memory_limit_bytes: limits.memory_bytes,
        oom_kills,
        // v1 has no count of limit OOMs (and newer kernels keep `memory.failcnt` at 0):
        // the limit was reached when the peak got within 1 MiB of it.
        limit_reached: limits
            .memory_bytes
            .zip(peak)
            .map(|(limit, peak)| peak + (1 << 20) >= limit),
        cpu_ns: dir(dirs, "cpuacct").and_then(|d| read_u64(&d.join("cpuacct.usage"))),
        blk_read_bytes: blkio(dirs, "Read"),
        blk_write_bytes: blkio(dirs, "Write"),
    }
}

/// `blkio.throttle.io_service_bytes` lines `MAJ:MIN Read N`, summed.
fn blkio(dirs: &Dirs, op: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir(dirs, "blkio")?.join("blkio.throttle.io_service_bytes"))
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

/// Removes each directory once its tasks are gone.
pub(super) fn remove(dirs: &Dirs) {
    for (_, dir) in dirs.iter().rev() {
        super::remove_dir(dir);
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
