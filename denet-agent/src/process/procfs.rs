//! Reads of /proc for tracked pids only (never a full /proc scan).

use std::{fs, io};

/// Fields of /proc/PID/stat (and status) the sampler needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub threads: u32,
    /// Start time, clock ticks since boot (CLOCK_BOOTTIME based).
    pub start_ticks: u64,
    pub rss_pages: u64,
    pub minflt: u64,
    pub majflt: u64,
    /// 'R', 'S', 'Z', ...
    pub state: char,
}

/// Parses /proc/PID/stat. The comm field may contain spaces and parentheses, so
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: num(4)? as u32,
        minflt: num(10)?,
        majflt: num(12)?,
        utime_ticks: num(14)?,
        stime_ticks: num(15)?,
        threads: num(20)? as u32,
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

pub fn read_stat(pid: u32) -> io::Result<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))
}

/// /proc/PID/io counters (needs the same user or root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcIo {
    pub rchar: u64,
    pub wchar: u64,
    pub syscr: u64,
    pub syscw: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

pub fn parse_io(text: &str) -> ProcIo {
    let mut io = ProcIo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().parse().unwrap_or(0);
        match k {
            "rchar" => io.rchar = v,
            "wchar" => io.wchar = v,
            "syscr" => io.syscr = v,
            "syscw" => io.syscw = v,
            "read_bytes" => io.read_bytes = v,
            "write_bytes" => io.write_bytes = v,
            "cancelled_write_bytes" => io.cancelled_write_bytes = v,
            _ => {}
        }
    }
    io
}

pub fn read_io(pid: u32) -> Option<ProcIo> {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .map(|t| parse_io(&t))
}

/// VmHWM (peak RSS) in KiB from /proc/PID/status.
pub fn read_vm_hwm_kb(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn read_cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| super::tracker::split_argv(&b))
        .unwrap_or_default()
}

pub fn read_exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The process's working directory (a /proc link, never a path of the user's).
pub fn read_cwd(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Direct children of every thread of `pid` (/proc/PID/task/TID/children).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Who a process is, from /proc/PID/status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcIdentity {
    pub tgid: u32,
    pub ppid: u32,
    /// Real, effective, saved and file-system uid.
    pub uids: [u32; 4],
}

pub fn parse_status(text: &str) -> Option<ProcIdentity> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let mut uids = [0u32; 4];
    let mut given = field("Uid:")?.split_ascii_whitespace();
    for u in &mut uids {
        *u = given.next()?.parse().ok()?;
    }
    Some(ProcIdentity {
        tgid: field("Tgid:")?.parse().ok()?,
        ppid: field("PPid:")?.parse().ok()?,
        uids,
    })
}

pub fn status(pid: u32) -> io::Result<ProcIdentity> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| io::Error::other(format!("/proc/{pid}/status: unreadable")))
}

/// The process exists (a zombie counts until it is reaped).
pub fn exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// Clock ticks per second (USER_HZ) and page size in KiB.
pub fn clock_ticks_and_page_kb() -> (u64, u64) {
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    (tck.max(1), (page / 1024).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_ids_and_uids() {
        let text = "Name:\tsh\nTgid:\t42\nPid:\t42\nPPid:\t7\nUid:\t1000\t1000\t0\t1000\nGid:\t1\t1\t1\t1\n";
        assert_eq!(
            parse_status(text),
            Some(ProcIdentity {
                tgid: 42,
                ppid: 7,
                uids: [1000, 1000, 0, 1000]
            })
        );
        assert_eq!(parse_status("Tgid:\t1\n"), None);
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 500 0 2 0 70 30 0 0 20 0 3 0 \
                    98765 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.minflt, 500);
        assert_eq!(s.majflt, 2);
        assert_eq!(s.utime_ticks, 70);
        assert_eq!(s.stime_ticks, 30);
        assert_eq!(s.threads, 3);
        assert_eq!(s.start_ticks, 98765);
        assert_eq!(s.rss_pages, 250);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn own_process_readable() {
        let me = std::process::id();
        let s = read_stat(me).unwrap();
        assert!(s.threads >= 1);
        assert!(s.rss_pages > 0);
        assert!(read_vm_hwm_kb(me).unwrap() > 0);
        assert!(!read_cmdline(me).is_empty());
    }

    #[test]
    fn io_parse() {
        let io = parse_io("rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 0\ncancelled_write_bytes: 0\n");
        assert_eq!(io.rchar, 10);
        assert_eq!(io.wchar, 20);
        assert_eq!(io.read_bytes, 4096);
    }
}
