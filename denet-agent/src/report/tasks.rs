//! Workflow tasks of a trace: one [`TaskRun`] per task instance (a Snakemake job, a
//! Nextflow task, a Slurm job) summed from its processes' records, and one
//! [`TaskGroup`] per task name (rule, process) for `stats --by task`, the HTML
//! report and the exports. The history's task rows are made from `TaskRun` too.
//!
//! A task's numbers are exact where its processes' are: CPU, I/O and process
//! counts are sums over the processes; its peak memory is its largest process's
//! peak (concurrent processes of one task, a pipe, are not summed: their peaks need
//! not coincide); its wall time runs from its first process's start to its last
//! process's end; its exit status is its first process's (the job's shell).

use std::collections::HashMap;

use serde::Serialize;

use crate::trace::{Process, Task};

/// One task instance.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRun {
    pub task: Task,
    pub processes: u64,
    pub start_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    pub cpu_user_ns: u64,
    pub cpu_sys_ns: u64,
    /// The largest peak RSS of its processes, KiB.
    pub peak_rss_kb: Option<u64>,
    /// The largest peak virtual size of its processes, KiB.
    pub peak_vm_kb: Option<u64>,
    /// Bytes through read/write calls (rchar, wchar), summed.
    pub rchar: u64,
    pub wchar: u64,
    /// Bytes from and to the storage layer (read_bytes, write_bytes), summed.
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Exit code and signal of its first process.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Processes of the task the OOM killer chose.
    pub oom_kills: u64,
    #[serde(skip)]
    first: (u64, u32),
}

impl TaskRun {
    fn new(task: Task) -> Self {
        Self {
            task,
            processes: 0,
            start_boot_ns: None,
            end_boot_ns: None,
            cpu_user_ns: 0,
            cpu_sys_ns: 0,
            peak_rss_kb: None,
            peak_vm_kb: None,
            rchar: 0,
            wchar: 0,
            read_bytes: 0,
            write_bytes: 0,
            exit_code: None,
            signal: None,
            oom_kills: 0,
            first: (u64::MAX, u32::MAX),
        }
    }

    fn add(&mut self, p: &Process) {
        self.processes += 1;
        if let Some(s) = p.start_boot_ns {
            self.start_boot_ns = Some(self.start_boot_ns.map_or(s, |t| t.min(s)));
        }
        if let Some(e) = p.end_boot_ns {
            self.end_boot_ns = Some(self.end_boot_ns.map_or(e, |t| t.max(e)));
        }
        self.cpu_user_ns += p.cpu_user_ns.unwrap_or(0);
        self.cpu_sys_ns += p.cpu_sys_ns.unwrap_or(0);
        let max = |acc: Option<u64>, v: Option<u64>| match (acc, v) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.peak_rss_kb = max(self.peak_rss_kb, p.peak_rss_kb);
        self.peak_vm_kb = max(self.peak_vm_kb, p.peak_vm_kb);
        self.rchar += p.rchar.unwrap_or(0);
        self.wchar += p.wchar.unwrap_or(0);
        self.read_bytes += p.read_bytes.unwrap_or(0);
        self.write_bytes += p.write_bytes.unwrap_or(0);
        if p.oom_killed == Some(true) {
            self.oom_kills += 1;
        }
        // The first process (earliest start, then lowest pid) is the task's own.
        let order = (
            p.start_boot_ns.unwrap_or(u64::MAX),
            p.pid.unwrap_or(u32::MAX),
        );
        if order < self.first {
            self.first = order;
            self.exit_code = p.exit_code;
            self.signal = p.signal;
        }
    }

    pub fn cpu_ns(&self) -> u64 {
        self.cpu_user_ns + self.cpu_sys_ns
    }

    pub fn wall_ns(&self) -> Option<u64> {
        Some(self.end_boot_ns?.saturating_sub(self.start_boot_ns?))
    }

    /// CPU time over wall time: 1.0 is one CPU busy the whole time.
    pub fn parallelism(&self) -> Option<f64> {
        let wall = self.wall_ns()?;
        (wall > 0).then(|| self.cpu_ns() as f64 / wall as f64)
    }

    /// Did not exit 0 (a signal, a non-zero code, or no exit seen).
    pub fn failed(&self) -> bool {
        self.exit_code != Some(0)
    }
}

/// The task instances of a trace, in order of first appearance.
#[derive(Debug, Default)]
pub struct TaskTable {
    index: HashMap<String, usize>,
    runs: Vec<TaskRun>,
}

impl TaskTable {
    pub fn add(&mut self, p: &Process) {
        let Some(task) = &p.task else {
            return;
        };
        let key = task.key();
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                self.runs.push(TaskRun::new(task.clone()));
                self.index.insert(key, self.runs.len() - 1);
                self.runs.len() - 1
            }
        };
        self.runs[i].add(p);
    }

    /// The task instances, by start.
    pub fn finish(self) -> Vec<TaskRun> {
        let mut runs = self.runs;
        runs.sort_by_key(|r| (r.start_boot_ns, r.first.1));
        runs
    }
}

/// All instances of one task name (a rule, a Nextflow process, a Slurm job name).
#[derive(Debug, Clone, Serialize)]
pub struct TaskGroup {
    pub engine: String,
    pub name: String,
    /// Task instances.
    pub tasks: u64,
    /// Instances that did not exit 0, and those with a process the OOM killer chose.
    pub failed: u64,
    pub oom_killed: u64,
    pub processes: u64,
    /// Summed over the instances, and the longest one.
    pub wall_ns: u64,
    pub wall_max_ns: u64,
    pub cpu_ns: u64,
    /// The largest process peak of any instance, KiB.
    pub peak_rss_kb: Option<u64>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub rchar: u64,
    pub wchar: u64,
}

/// Groups instances by engine and name, in order of first start.
pub fn groups(runs: &[TaskRun]) -> Vec<TaskGroup> {
    let mut out: Vec<TaskGroup> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for r in runs {
        let key = (r.task.engine.to_string(), r.task.group_name().to_string());
        let i = *index.entry(key.clone()).or_insert_with(|| {
            out.push(TaskGroup {
                engine: key.0,
                name: key.1,
                tasks: 0,
                failed: 0,
                oom_killed: 0,
                processes: 0,
                wall_ns: 0,
                wall_max_ns: 0,
                cpu_ns: 0,
                peak_rss_kb: None,
                read_bytes: 0,
                write_bytes: 0,
                rchar: 0,
                wchar: 0,
            });
            out.len() - 1
        });
        let g = &mut out[i];
        g.tasks += 1;
        g.failed += u64::from(r.failed());
        g.oom_killed += u64::from(r.oom_kills > 0);
        g.processes += r.processes;
        let wall = r.wall_ns().unwrap_or(0);
        g.wall_ns += wall;
        g.wall_max_ns = g.wall_max_ns.max(wall);
        g.cpu_ns += r.cpu_ns();
        g.peak_rss_kb = match (g.peak_rss_kb, r.peak_rss_kb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        g.read_bytes += r.read_bytes;
        g.write_bytes += r.write_bytes;
        g.rchar += r.rchar;
        g.wchar += r.wchar;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(
        pid: u32,
        task: &Task,
        start: u64,
        end: u64,
        cpu_ms: u64,
        rss: u64,
        exit: i32,
    ) -> Process {
        Process {
            pid: Some(pid),
            start_boot_ns: Some(start),
            end_boot_ns: Some(end),
            cpu_user_ns: Some(cpu_ms * 1_000_000),
            cpu_sys_ns: Some(0),
            peak_rss_kb: Some(rss),
            read_bytes: Some(10),
            write_bytes: Some(5),
            exit_code: Some(exit),
            task: Some(task.clone()),
            ..Process::default()
        }
    }

    fn job(rule: &str, id: &str) -> Task {
        Task {
            engine: "snakemake".into(),
            name: Some(rule.into()),
            id: Some(id.into()),
            ..Task::default()
        }
    }

    #[test]
    fn instances_sum_their_processes_and_groups_sum_instances() {
        let (a1, a2, b1) = (job("a", "1"), job("a", "2"), job("b", "3"));
        let mut t = TaskTable::default();
        // Children end first; the shell (first started) decides the exit.
        t.add(&proc(11, &a1, 110, 150, 30, 900, 0));
        t.add(&proc(10, &a1, 100, 200, 10, 500, 0));
        t.add(&proc(21, &a2, 300, 320, 5, 100, 1));
        t.add(&proc(20, &a2, 290, 330, 5, 200, 0));
        t.add(&proc(30, &b1, 400, 500, 50, 50, 0));
        t.add(&Process::default());
        let runs = t.finish();
        assert_eq!(runs.len(), 3);
        let r = &runs[0];
        assert_eq!(
            (r.processes, r.cpu_ns(), r.peak_rss_kb),
            (2, 40_000_000, Some(900))
        );
        assert_eq!(
            (r.wall_ns(), r.exit_code, r.read_bytes),
            (Some(100), Some(0), 20)
        );
        assert!(
            !runs[1].failed(),
            "the shell exited 0, its child's 1 is not the task's"
        );
        let g = groups(&runs);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].name.as_str(), g[0].tasks, g[0].failed), ("a", 2, 0));
        assert_eq!(
            (g[0].wall_ns, g[0].wall_max_ns, g[0].cpu_ns),
            (140, 100, 50_000_000)
        );
        assert_eq!(g[0].peak_rss_kb, Some(900));
        assert_eq!((g[1].name.as_str(), g[1].tasks), ("b", 1));
    }
}
