//! The process tree, built in bounded memory from records that arrive in exit order
//! (children before their parents).
//!
//! Each arriving process becomes a group that adopts the subtrees of its children
//! seen so far, then waits (in `pending`, keyed by its parent's pid) for its parent.
//! Siblings with the same command line are merged into one group (`/bin/true ×1000`),
//! and past [`FOLD_AFTER`] distinct command lines of one program under one parent the
//! rest fold into one `program … (other arguments)` group. So memory grows with the
//! shape of the tree (distinct commands per parent, live parents), not with the
//! number of processes or the length of the trace.

use std::collections::{HashMap, VecDeque};

use super::command;
use crate::trace::{
    metrics::{Counters, M},
    Header, Process,
};

/// Distinct command lines of one program under one parent shown separately.
pub const FOLD_AFTER: usize = 8;
/// Exits remembered to name the parent of an orphan whose parent exited first.
const RECENT_EXITS: usize = 4096;

fn add(a: &mut Option<u64>, b: Option<u64>) {
    if let Some(b) = b {
        *a = Some(a.unwrap_or(0).saturating_add(b));
    }
}

fn max(a: &mut Option<u64>, b: Option<u64>) {
    if let Some(b) = b {
        *a = Some(a.map_or(b, |x| x.max(b)));
    }
}

fn min(a: &mut Option<u64>, b: Option<u64>) {
    if let Some(b) = b {
        *a = Some(a.map_or(b, |x| x.min(b)));
    }
}

/// Metrics of one process or combined over a group (sums, maxima for peaks; see
/// `trace::metrics`). `None`: no member reported the value.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    pub count: u64,
    pub first_start_ns: Option<u64>,
    pub last_end_ns: Option<u64>,
    pub wall_ns: Option<u64>,
    pub wall_max_ns: Option<u64>,
    /// Members that exited with a non-zero code.
    pub failed: u64,
    /// Members killed by a signal.
    pub killed: u64,
    /// Members whose exit was not seen (`source: "missing"`).
    pub missing: u64,
    pub counters: Counters,
}

impl Agg {
    pub fn of(p: &Process) -> Agg {
        let mut a = Agg::default();
        a.add_process(p);
        a
    }

    pub fn get(&self, m: M) -> Option<u64> {
        self.counters.get(m)
    }

    pub fn add_process(&mut self, p: &Process) {
        self.count += 1;
        min(&mut self.first_start_ns, p.start_boot_ns);
        max(&mut self.last_end_ns, p.end_boot_ns);
        add(&mut self.wall_ns, p.wall());
        max(&mut self.wall_max_ns, p.wall());
        if p.signal.is_some() {
            self.killed += 1;
        } else if p.exit_code.is_some_and(|c| c != 0) {
            self.failed += 1;
        }
        if p.source.as_deref() == Some("missing") {
            self.missing += 1;
        }
        self.counters.add_process(p);
    }

    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        min(&mut self.first_start_ns, o.first_start_ns);
        max(&mut self.last_end_ns, o.last_end_ns);
        add(&mut self.wall_ns, o.wall_ns);
        max(&mut self.wall_max_ns, o.wall_max_ns);
        self.failed += o.failed;
        self.killed += o.killed;
        self.missing += o.missing;
        self.counters.merge(&o.counters);
    }

    pub fn cpu_ns(&self) -> Option<u64> {
        match (self.get(M::CpuUserNs), self.get(M::CpuSysNs)) {
            (None, None) => None,
            (u, s) => Some(u.unwrap_or(0) + s.unwrap_or(0)),
        }
    }

    /// CPU time over the members' summed wall time: percent of one CPU.
    pub fn cpu_percent(&self) -> Option<f64> {
        let wall = self.wall_ns?;
        (wall > 0).then(|| self.cpu_ns().unwrap_or(0) as f64 * 100.0 / wall as f64)
    }
}

/// One line of the tree: a process, or siblings merged because they ran the same
/// command line (or the same program, when `other_args`).
#[derive(Debug, Clone)]
pub struct Group {
    key: u64,
    pub program: String,
    pub label: String,
    /// argv of the first member.
    pub argv: Vec<String>,
    /// pid of the first member (the one that started first).
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// Siblings of one program with more distinct command lines than [`FOLD_AFTER`].
    pub other_args: bool,
    /// A parent that has no record: named from what is known about it.
    pub placeholder: bool,
    pub agg: Agg,
    pub children: Vec<Group>,
}

fn hash_cmd(argv: &[String], exe: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    argv.hash(&mut h);
    exe.hash(&mut h);
    h.finish()
}

impl Group {
    pub fn of(p: &Process) -> Group {
        Group {
            key: hash_cmd(&p.argv, p.exe.as_deref()),
            program: command::program(&p.argv, p.exe.as_deref()),
            label: command::label(&p.argv, p.exe.as_deref()),
            argv: p.argv.clone(),
            pid: p.pid,
            exit_code: p.exit_code,
            signal: p.signal,
            core_dumped: p.core_dumped,
            other_args: false,
            placeholder: false,
            agg: Agg::of(p),
            children: Vec::new(),
        }
    }

    fn placeholder(pid: u32, label: String, children: Vec<Group>) -> Group {
        let mut agg = Agg::default();
        for c in &children {
            min(&mut agg.first_start_ns, c.agg.first_start_ns);
            max(&mut agg.last_end_ns, c.agg.last_end_ns);
        }
        Group {
            key: 0,
            program: String::new(),
            label,
            argv: Vec::new(),
            pid: (pid != 0).then_some(pid),
            exit_code: None,
            signal: None,
            core_dumped: false,
            other_args: false,
            placeholder: true,
            agg,
            children,
        }
    }

    fn merge(&mut self, other: Group) {
        // The earliest member represents the group.
        if other.agg.first_start_ns < self.agg.first_start_ns && other.agg.first_start_ns.is_some()
            || self.agg.first_start_ns.is_none()
        {
            self.pid = other.pid;
            self.argv = other.argv;
            self.exit_code = other.exit_code;
            self.signal = other.signal;
            self.core_dumped = other.core_dumped;
            if !self.other_args {
                self.label = other.label;
            }
        }
        self.agg.merge(&other.agg);
        for c in other.children {
            insert_child(&mut self.children, c);
        }
    }

    /// Sorts children by start time, recursively (the order the tree is shown in).
    fn sort(&mut self) {
        self.children
            .sort_by_key(|c| (c.agg.first_start_ns.is_none(), c.agg.first_start_ns, c.pid));
        for c in &mut self.children {
            c.sort();
        }
    }

    /// Number of groups in this subtree, itself included.
    pub fn size(&self) -> usize {
        1 + self.children.iter().map(Group::size).sum::<usize>()
    }
}

/// Adds a subtree to a sibling list, merging it with an equal command line or, past
/// the fold limit, into the program's `other arguments` group.
fn insert_child(list: &mut Vec<Group>, g: Group) {
    if let Some(same) = list.iter_mut().find(|x| !x.other_args && x.key == g.key) {
        same.merge(g);
        return;
    }
    let same_program = list
        .iter()
        .filter(|x| !x.other_args && x.program == g.program)
        .count();
    if same_program < FOLD_AFTER {
        list.push(g);
        return;
    }
    if let Some(other) = list
        .iter_mut()
        .find(|x| x.other_args && x.program == g.program)
    {
        other.merge(g);
    } else {
        let mut g = g;
        g.other_args = true;
        g.label = format!("{} … (other arguments)", g.program);
        list.push(g);
    }
}

/// A process whose record has been seen, remembered briefly to recognise orphans.
struct Exited {
    key: u64,
    label: String,
    end_ns: Option<u64>,
}

#[derive(Default)]
pub struct TreeBuilder {
    /// Subtrees waiting for their parent's record, by parent pid (0: unknown parent).
    pending: HashMap<u32, Vec<Group>>,
    /// Subtrees whose parent exited before them (orphans, daemons), merged by the
    /// parent's command line so repeated patterns stay one line.
    orphans: Vec<(u64, String, Vec<Group>)>,
    /// The last [`RECENT_EXITS`] exits, by pid, oldest first in `recent_order`.
    recent: HashMap<u32, Exited>,
    recent_order: VecDeque<u32>,
}

impl TreeBuilder {
    pub fn add(&mut self, p: &Process) {
        let mut g = Group::of(p);
        if let Some(pid) = p.pid {
            if let Some(children) = self.pending.remove(&pid) {
                for c in children {
                    // A child that started before this process cannot be its child:
                    // it belonged to an earlier process with the same (reused) pid.
                    let before = matches!((c.agg.first_start_ns, p.start_boot_ns), (Some(c), Some(s)) if c < s);
                    if before {
                        self.adopt_orphan(pid, c);
                    } else {
                        insert_child(&mut g.children, c);
                    }
                }
            }
            self.remember(pid, &g, p.end_boot_ns);
        }
        let ppid = p.ppid.unwrap_or(0);
        // The parent's record came first: this process outlived it.
        let orphan = self.recent.get(&ppid).is_some_and(
            |e| !matches!((p.start_boot_ns, e.end_ns), (Some(s), Some(end)) if s > end),
        );
        if orphan {
            self.adopt_orphan(ppid, g);
        } else {
            insert_child(self.pending.entry(ppid).or_default(), g);
        }
    }

    fn remember(&mut self, pid: u32, g: &Group, end_ns: Option<u64>) {
        if self.recent_order.len() >= RECENT_EXITS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        let e = Exited {
            key: g.key,
            label: g.label.clone(),
            end_ns,
        };
        if self.recent.insert(pid, e).is_some() {
            self.recent_order.retain(|p| *p != pid);
        }
        self.recent_order.push_back(pid);
    }

    /// Files an orphan under its (exited) parent's command line.
    fn adopt_orphan(&mut self, ppid: u32, g: Group) {
        let (key, label) = match self.recent.get(&ppid) {
            Some(e) => (e.key, e.label.clone()),
            None => (u64::from(ppid), format!("pid {ppid}")),
        };
        match self.orphans.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, list)) => insert_child(list, g),
            None => self.orphans.push((key, label, vec![g])),
        }
    }

    /// Groups waiting for their parents (for memory accounting in tests).
    pub fn pending_groups(&self) -> usize {
        self.pending.values().flatten().map(Group::size).sum()
    }

    /// The finished tree: the command's subtree first, then subtrees whose parent
    /// has no record (still running when the trace ended, or exited before them),
    /// each under a placeholder naming that parent.
    pub fn finish(mut self, header: &Header) -> Vec<Group> {
        let mut roots = Vec::new();
        let agent = header.agent_pid.unwrap_or(u32::MAX);
        if let Some(top) = self.pending.remove(&agent) {
            roots.extend(top);
        }
        let mut rest: Vec<(u32, Vec<Group>)> = self.pending.drain().collect();
        rest.sort_by_key(|(pid, g)| (g.iter().filter_map(|c| c.agg.first_start_ns).min(), *pid));
        let mut placeholders = Vec::new();
        for (pid, children) in rest {
            let label = if pid == 0 {
                "[parent unknown: fork event lost]".to_string()
            } else if Some(pid) == header.pid {
                format!(
                    "{} [no exit record: still running when the trace ended]",
                    command::label(&header.argv, None)
                )
            } else {
                format!("[pid {pid}: no record]")
            };
            placeholders.push(Group::placeholder(pid, label, children));
        }
        for (_, label, children) in self.orphans.drain(..) {
            let label = format!("[outlived their parent: {label}]");
            placeholders.push(Group::placeholder(0, label, children));
        }
        placeholders.sort_by_key(|g| (g.agg.first_start_ns.is_none(), g.agg.first_start_ns));
        roots.extend(placeholders);
        for r in &mut roots {
            r.sort();
        }
        roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, argv: &[&str], start: u64, end: u64) -> Process {
        Process {
            pid: Some(pid),
            ppid: Some(ppid),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            start_boot_ns: Some(start),
            end_boot_ns: Some(end),
            cpu_user_ns: Some(10),
            cpu_sys_ns: Some(5),
            exit_code: Some(0),
            peak_rss_kb: Some(pid as u64),
            ..Default::default()
        }
    }

    fn header() -> Header {
        Header {
            agent_pid: Some(1),
            pid: Some(2),
            argv: vec!["sh".into(), "job.sh".into()],
            ..Default::default()
        }
    }

    #[test]
    fn children_first_builds_the_tree_and_merges_equal_siblings() {
        let mut t = TreeBuilder::default();
        // Records come in exit order: the grandchild before its parent.
        t.add(&proc(200, 3, &["helper"], 11, 12));
        t.add(&proc(3, 2, &["sort", "-n"], 10, 20));
        for pid in 4..104 {
            t.add(&proc(
                pid,
                2,
                &["/bin/true"],
                pid as u64 * 10,
                pid as u64 * 10 + 5,
            ));
        }
        // The late child of a process whose record came before it (an orphan).
        t.add(&proc(2, 1, &["sh", "job.sh"], 1, 2000));
        t.add(&proc(300, 2, &["sleep", "1"], 1500, 3000));
        let roots = t.finish(&header());
        assert_eq!(roots.len(), 2, "{roots:#?}");
        let sh = &roots[0];
        assert_eq!(sh.label, "sh job.sh");
        assert_eq!(sh.children.len(), 2);
        assert_eq!(sh.children[0].label, "sort -n");
        // The grandchild that exited before its parent's record is under it.
        assert_eq!(sh.children[0].children[0].label, "helper");
        let t100 = &sh.children[1];
        assert_eq!((t100.label.as_str(), t100.agg.count), ("true", 100));
        assert_eq!(t100.agg.cpu_ns(), Some(1500));
        assert_eq!(t100.agg.get(M::PeakRssKb), Some(103));
        assert_eq!(t100.pid, Some(4));
        let orphan = &roots[1];
        assert!(orphan.placeholder);
        assert_eq!(orphan.label, "[outlived their parent: sh job.sh]");
        assert_eq!(orphan.children[0].label, "sleep 1");
    }

    #[test]
    fn many_distinct_command_lines_fold_per_program() {
        let mut t = TreeBuilder::default();
        for i in 0..1000u32 {
            let arg = format!("sample{i}.fq");
            t.add(&proc(
                10 + i,
                2,
                &["bwa", "mem", &arg],
                i as u64,
                i as u64 + 1,
            ));
        }
        assert!(t.pending_groups() <= FOLD_AFTER + 1);
        t.add(&proc(2, 1, &["sh", "job.sh"], 0, 5000));
        let roots = t.finish(&header());
        let kids = &roots[0].children;
        assert_eq!(kids.len(), FOLD_AFTER + 1);
        let other = kids.iter().find(|k| k.other_args).map(|k| k.agg.count);
        assert_eq!(other, Some(1000 - FOLD_AFTER as u64));
        assert_eq!(kids.iter().map(|k| k.agg.count).sum::<u64>(), 1000);
    }

    #[test]
    fn repeated_orphans_merge_by_their_parents_command() {
        let mut t = TreeBuilder::default();
        for i in 0..1000u32 {
            let (pid, at) = (10 + 2 * i, u64::from(i) * 100);
            // A subshell that exits at once, and its child that outlives it.
            t.add(&proc(pid, 2, &["sh", "-c", "sleep 1 &"], at, at + 5));
            t.add(&proc(pid + 1, pid, &["sleep", "1"], at + 1, at + 50));
        }
        assert!(t.pending_groups() <= 1 && t.orphans.len() == 1);
        t.add(&proc(2, 1, &["sh", "job.sh"], 0, 200_000));
        let roots = t.finish(&header());
        assert_eq!(roots.len(), 2);
        assert_eq!(roots[0].children[0].agg.count, 1000);
        assert_eq!(roots[1].label, "[outlived their parent: sh -c 'sleep 1 &']");
        assert_eq!(roots[1].children[0].agg.count, 1000);
    }

    #[test]
    fn killed_run_shows_the_command_as_a_placeholder() {
        let mut t = TreeBuilder::default();
        t.add(&proc(3, 2, &["sleep", "0.1"], 5, 10));
        let roots = t.finish(&header());
        assert_eq!(roots.len(), 1);
        assert!(roots[0].placeholder);
        assert!(
            roots[0].label.starts_with("sh job.sh [no exit record"),
            "{}",
            roots[0].label
        );
        assert_eq!(roots[0].children[0].label, "sleep 0.1");
    }
}
