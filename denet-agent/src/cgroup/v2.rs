//! cgroup v2: one unified hierarchy at /sys/fs/cgroup, so a run's cgroup is one
//! directory. Controllers reach a child only when its parent enables them in
//! `cgroup.subtree_control`, and a cgroup holding processes (other than the root)
//! may not: where the parent has processes of its own (a login scope, a Slurm task,
//! a container), the run reads that cgroup instead.

use std::path::{Path, PathBuf};

use super::{io_err, read_u64, write, CgroupError, Limits, Usage, CFS_PERIOD_US, ROOT};

/// Controllers a run's cgroup uses; memory is required, the others when offered.
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "io"];

/// v2 is in use where the unified hierarchy is mounted at the root.
pub(super) fn mounted() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// `pid`'s cgroup directory, from its `0::/path` line of /proc/PID/cgroup.
pub(super) fn of_pid(pid: u32) -> Result<PathBuf, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&file).map_err(io_err("reading", &file))?;
    let path =
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or(CgroupError::NotInCgroup {
                pid,
                controller: "unified (v2)",
            })?;
    Ok(Path::new(ROOT).join(path.trim_start_matches('/')))
}

fn words(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(std::fs::read_to_string(path)
        .map_err(io_err("reading", path))?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Enables in `parent` the controllers its children need.
fn delegate(parent: &Path) -> Result<(), CgroupError> {
    let offered = words(&parent.join("cgroup.controllers"))?;
    if !offered.iter().any(|c| c == "memory") {
        return Err(CgroupError::NoMemoryController(parent.to_path_buf()));
    }
    let enabled = words(&parent.join("cgroup.subtree_control"))?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| offered.iter().any(|o| o == *c) && !enabled.iter().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let control = parent.join("cgroup.subtree_control");
    std::fs::write(&control, missing.join(" ")).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::NotDelegated(parent.to_path_buf())
        } else {
            io_err("writing", &control)(e)
        }
    })
}

/// Makes `name` inside `parent_pid`'s cgroup, with the controllers enabled.
pub(super) fn create(name: &str, parent_pid: u32) -> Result<PathBuf, CgroupError> {
    let parent = of_pid(parent_pid)?;
    delegate(&parent)?;
    let dir = parent.join(name);
    std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
    Ok(dir)
}

/// `memory.max`: a byte count, or "max" (no limit), which reads as None.
pub(super) fn memory_limit(dir: &Path) -> Option<u64> {
    read_u64(&dir.join("memory.max"))
}

pub(super) fn apply_limits(dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
    if let Some(bytes) = limits.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        // Swap may not be a way around the limit (v1's memsw limit does the same).
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    }
    if let Some(n) = limits.max_pids {
        write(&dir.join("pids.max"), &n.to_string())?;
    }
    if let Some(cpus) = limits.cpus {
        write(
            &dir.join("cpu.max"),
            &format!("{} {CFS_PERIOD_US}", super::cpu_quota_us(cpus)),
        )?;
    }
    Ok(())
}

/// The value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `io.stat` lines `MAJ:MIN rbytes=N wbytes=N ...`, `field` summed over devices.
fn io_stat(dir: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("io.stat")).ok()?;
    Some(
        text.lines()
            .flat_map(|l| l.split_whitespace().skip(1))
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == field)
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum(),
    )
}

pub(super) fn usage(dir: &Path, limits: &Limits) -> Usage {
    Usage {
        // memory.peak exists from 5.19.
        memory_peak_bytes: read_u64(&dir.join("memory.peak")),
        memory_limit_bytes: limits.memory_bytes,
        oom_kills: keyed(&dir.join("memory.events"), "oom_kill"),
        limit_reached: keyed(&dir.join("memory.events"), "oom").map(|n| n > 0),
        cpu_ns: keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000),
        blk_read_bytes: io_stat(dir, "rbytes"),
        blk_write_bytes: io_stat(dir, "wbytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_io_stat_files_parse() {
        let dir = std::env::temp_dir().join(format!("denet-cg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("io.stat"),
            "8:0 rbytes=4096 wbytes=100 rios=1 wios=2 dbytes=0 dios=0\n\
             8:16 rbytes=10 wbytes=5 rios=1 wios=1 dbytes=0 dios=0\n",
        )
        .unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        let u = usage(&dir, &Limits::default());
        assert_eq!(u.oom_kills, Some(1));
        assert_eq!(u.limit_reached, Some(true));
        assert_eq!(u.blk_read_bytes, Some(4106));
        assert_eq!(u.blk_write_bytes, Some(105));
        assert_eq!(u.cpu_ns, Some(1_500_000));
        assert_eq!(u.memory_peak_bytes, None);
        assert_eq!(memory_limit(&dir), None);
        std::fs::write(dir.join("memory.max"), "104857600\n").unwrap();
        assert_eq!(memory_limit(&dir), Some(100 << 20));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
