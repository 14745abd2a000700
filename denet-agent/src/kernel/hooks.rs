//! Which kernel hook serves each feature on the running kernel.
//!
//! Tracepoints change shape between kernels: `sched_process_exit` gained
//! `group_dead` and moved before `exit_mm()` in 6.16, `mark_victim` passed only the
//! pid before it passed the task (Debian's 6.1 already passes the task), and
//! `sock_send_length`/`sock_recv_length` exist since 6.3. So each feature lists its hooks best first, and the plan takes, for
//! each, the first whose tracepoint has the prototype the program reads or whose
//! kernel function BTF describes (fentry/fexit, which some kernels refuse at load:
//! then the feature is dropped, or the run falls back, see `KernelTracer::load`).
//! The header of every trace records the choice.

use std::collections::BTreeMap;

use super::btf::Btf;

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A raw tracepoint whose `TP_PROTO` has `args` arguments (read by position).
    RawTp { tracepoint: &'static str, args: u32 },
    /// A BTF trampoline on entry to a kernel function.
    FEntry(&'static str),
    /// A BTF trampoline on return from a kernel function.
    FExit(&'static str),
}

impl Hook {
    /// fentry/fexit: needs aya's parse of the kernel BTF, and some kernels refuse it.
    pub fn is_trampoline(&self) -> bool {
        !matches!(self, Hook::RawTp { .. })
    }

    /// `raw_tp/sched_switch`, `fentry/taskstats_exit`, `fexit/sock_sendmsg`.
    pub fn describe(&self) -> String {
        match self {
            Hook::RawTp { tracepoint, .. } => format!("raw_tp/{tracepoint}"),
            Hook::FEntry(f) => format!("fentry/{f}"),
            Hook::FExit(f) => format!("fexit/{f}"),
        }
    }

    /// Why this kernel cannot serve the hook, judged from its BTF.
    fn unusable(&self, btf: &Btf) -> Option<String> {
        match *self {
            Hook::RawTp { tracepoint, args } => match btf.tracepoint_arg_count(tracepoint) {
                Ok(n) if n == args => None,
                Ok(n) => Some(format!(
                    "tracepoint {tracepoint} has {n} arguments here, the program reads {args}"
                )),
                Err(e) => Some(format!("tracepoint {tracepoint}: {e}")),
            },
            Hook::FEntry(f) | Hook::FExit(f) => {
                (!btf.has_function(f)).then(|| format!("no kernel function {f} in BTF"))
            }
        }
    }
}

/// What a run needs from the kernel; each is served by one alternative's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Scheduler,
    Syscalls,
    Files,
    BlockIo,
    Network,
    OomVictim,
    Exit,
    Exec,
    Fork,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Feature::Scheduler => "scheduler",
            Feature::Syscalls => "syscalls",
            Feature::Files => "files",
            Feature::BlockIo => "block_io",
            Feature::Network => "network",
            Feature::OomVictim => "oom_victim",
            Feature::Exit => "exit",
            Feature::Exec => "exec",
            Feature::Fork => "fork",
        }
    }

    /// Without these there is no process tree: the run falls back to /proc.
    pub fn essential(self) -> bool {
        matches!(self, Feature::Exit | Feature::Exec | Feature::Fork)
    }
}

/// When a program is loaded and attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Every run: lifecycle, exit accounting, scheduler, block, network.
    Always,
    /// Only with `--files` or `--syscalls`: on `raw_syscalls`, so while attached it
    /// runs for every syscall of every task on the machine.
    SyscallHooks,
    /// With `--files`, where the kernel takes trampolines: the file accounting on
    /// the file syscalls' own functions, so other syscalls pay nothing (the raw
    /// syscall hooks slow every syscall of the machine).
    Files,
}

/// One kernel program: its name in the eBPF object, the feature it serves, its
/// alternative (0 is preferred; all programs of one alternative go together), and
/// how it attaches.
pub struct Program {
    pub name: &'static str,
    pub feature: Feature,
    pub alt: u8,
    pub hook: Hook,
    pub needs: Needs,
}

const fn tp(name: &'static str, feature: Feature, alt: u8, args: u32, needs: Needs) -> Program {
    Program {
        name,
        feature,
        alt,
        hook: Hook::RawTp {
            tracepoint: name,
            args,
        },
        needs,
    }
}

const fn tramp(name: &'static str, feature: Feature, alt: u8, hook: Hook) -> Program {
    Program {
        name,
        feature,
        alt,
        hook,
        needs: if matches!(feature, Feature::Files) {
            Needs::Files
        } else {
            Always
        },
    }
}

/// `fexit` on `__x64_sys_<name>`, for the file accounting.
const fn file_fexit(name: &'static str, function: &'static str) -> Program {
    tramp(name, F::Files, 0, Hook::FExit(function))
}

use Feature as F;
use Needs::{Always, SyscallHooks};

/// The program table, in attach order: the per-process accounting first, then exit
/// and exec, and fork last, so no process can enter the tracked set before everything
/// that follows it is watching.
pub const PROGRAMS: &[Program] = &[
    tp("sched_switch", F::Scheduler, 0, 4, Always),
    tp("sched_wakeup", F::Scheduler, 0, 1, Always),
    tp("sched_wakeup_new", F::Scheduler, 0, 1, Always),
    tp("sys_enter", F::Syscalls, 0, 2, SyscallHooks),
    tp("sys_exit", F::Syscalls, 0, 2, SyscallHooks),
    file_fexit("f_read", "__x64_sys_read"),
    file_fexit("f_write", "__x64_sys_write"),
    file_fexit("f_pread64", "__x64_sys_pread64"),
    file_fexit("f_pwrite64", "__x64_sys_pwrite64"),
    file_fexit("f_readv", "__x64_sys_readv"),
    file_fexit("f_writev", "__x64_sys_writev"),
    file_fexit("f_preadv", "__x64_sys_preadv"),
    file_fexit("f_pwritev", "__x64_sys_pwritev"),
    file_fexit("f_preadv2", "__x64_sys_preadv2"),
    file_fexit("f_pwritev2", "__x64_sys_pwritev2"),
    file_fexit("f_sendfile", "__x64_sys_sendfile64"),
    file_fexit("f_splice", "__x64_sys_splice"),
    file_fexit("f_copy_range", "__x64_sys_copy_file_range"),
    file_fexit("f_open", "__x64_sys_open"),
    file_fexit("f_openat", "__x64_sys_openat"),
    file_fexit("f_openat2", "__x64_sys_openat2"),
    file_fexit("f_creat", "__x64_sys_creat"),
    file_fexit("f_chdir", "__x64_sys_chdir"),
    file_fexit("f_fchdir", "__x64_sys_fchdir"),
    file_fexit("f_dup", "__x64_sys_dup"),
    file_fexit("f_dup2", "__x64_sys_dup2"),
    file_fexit("f_dup3", "__x64_sys_dup3"),
    file_fexit("f_fcntl", "__x64_sys_fcntl"),
    tramp("f_close", F::Files, 0, Hook::FEntry("__x64_sys_close")),
    tp("block_bio_queue", F::BlockIo, 0, 1, Always),
    tp("block_rq_complete", F::BlockIo, 0, 3, Always),
    tp("sock_send_length", F::Network, 0, 3, Always),
    tp("sock_recv_length", F::Network, 0, 3, Always),
    tramp("inet_sendmsg", F::Network, 1, Hook::FExit("inet_sendmsg")),
    tramp("inet6_sendmsg", F::Network, 1, Hook::FExit("inet6_sendmsg")),
    tramp("inet_recvmsg", F::Network, 1, Hook::FExit("inet_recvmsg")),
    tramp("inet6_recvmsg", F::Network, 1, Hook::FExit("inet6_recvmsg")),
    tp("mark_victim", F::OomVictim, 0, 2, Always),
    tp("sched_process_exit", F::Exit, 0, 2, Always),
    tramp("taskstats_exit", F::Exit, 1, Hook::FEntry("taskstats_exit")),
    tp("sched_process_exec", F::Exec, 0, 3, Always),
    tp("sched_process_fork", F::Fork, 0, 2, Always),
];

/// The programs chosen for this kernel: bit `i` is `PROGRAMS[i]`; bit 63 says the
/// kernel refused trampoline programs when they were tried (kept with the plan in
/// the offsets cache, so later runs do not try again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    pub chosen: u64,
}

const REFUSES_TRAMPOLINES: u64 = 1 << 63;

/// A feature this kernel cannot serve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub feature: Feature,
    pub reason: String,
}

fn features() -> Vec<Feature> {
    let mut f: Vec<Feature> = PROGRAMS.iter().map(|p| p.feature).collect();
    f.sort_unstable();
    f.dedup();
    f
}

impl Plan {
    /// For each feature, the first alternative all of whose hooks this kernel's BTF
    /// can serve. The features none can serve are returned with the reasons.
    pub fn from_btf(btf: &Btf) -> (Plan, Vec<Missing>) {
        let mut plan = Plan::default();
        let mut missing = Vec::new();
        for feature in features() {
            let mut reasons = Vec::new();
            let alts = PROGRAMS
                .iter()
                .filter(|p| p.feature == feature)
                .map(|p| p.alt)
                .max()
                .unwrap_or(0);
            let found = (0..=alts).find(|&alt| {
                let members = || {
                    PROGRAMS
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.feature == feature && p.alt == alt)
                };
                let why: Vec<String> = members()
                    .filter_map(|(_, p)| p.hook.unusable(btf))
                    .collect();
                if why.is_empty() {
                    for (i, _) in members() {
                        plan.chosen |= 1 << i;
                    }
                    true
                } else {
                    reasons.extend(why);
                    false
                }
            });
            if found.is_none() {
                missing.push(Missing {
                    feature,
                    reason: reasons.join("; "),
                });
            }
        }
        (plan, missing)
    }

    /// The chosen programs, in attach order.
    pub fn programs(&self) -> impl Iterator<Item = &'static Program> + '_ {
        PROGRAMS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.chosen & (1 << i) != 0)
            .map(|(_, p)| p)
    }

    /// Whether an earlier run found that this kernel refuses trampolines.
    pub fn refuses_trampolines(&self) -> bool {
        self.chosen & REFUSES_TRAMPOLINES != 0
    }

    /// Records that the kernel refused trampolines and drops every feature whose
    /// chosen hooks are trampolines; returns the features dropped.
    pub fn trampolines_refused(&mut self) -> Vec<Feature> {
        self.chosen |= REFUSES_TRAMPOLINES;
        let mut dropped: Vec<Feature> = self
            .programs()
            .filter(|p| p.hook.is_trampoline())
            .map(|p| p.feature)
            .collect();
        dropped.sort_unstable();
        dropped.dedup();
        for f in &dropped {
            self.drop_feature(*f);
        }
        dropped
    }

    pub fn serves(&self, feature: Feature) -> bool {
        self.programs().any(|p| p.feature == feature)
    }

    /// Stops using a feature (its programs failed to load).
    pub fn drop_feature(&mut self, feature: Feature) {
        for (i, p) in PROGRAMS.iter().enumerate() {
            if p.feature == feature {
                self.chosen &= !(1 << i);
            }
        }
    }

    /// Feature name to the hooks that serve it, for the header; the syscall hooks
    /// and the file trampolines only when attached.
    pub fn hooks(&self, syscall_hooks: bool, file_hooks: bool) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in self.programs() {
            if (p.needs == SyscallHooks && !syscall_hooks)
                || (p.needs == Needs::Files && !file_hooks)
            {
                continue;
            }
            out.entry(p.feature.name().to_owned())
                .or_default()
                .push(p.hook.describe());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits_the_plan_and_every_feature_has_a_first_choice() {
        assert!(PROGRAMS.len() < 63);
        for f in features() {
            assert!(
                PROGRAMS.iter().any(|p| p.feature == f && p.alt == 0),
                "{f:?}"
            );
        }
        // Names are unique: they are the object's program names.
        let mut names: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROGRAMS.len());
    }

    /// On the running kernel: every feature is served, and the header lists them.
    #[test]
    fn plan_of_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let (plan, missing) = Plan::from_btf(&btf);
        assert!(missing.is_empty(), "{missing:?}");
        let hooks = plan.hooks(false, false);
        assert!(hooks.contains_key("exit") && hooks.contains_key("fork"));
        assert!(!hooks.contains_key("syscalls") && !hooks.contains_key("files"));
        assert!(plan.hooks(true, false).contains_key("syscalls"));
        assert!(plan.hooks(false, true).contains_key("files"));
        // A kernel that refuses trampolines loses the features they serve, and the
        // plan remembers it.
        let mut refused = plan;
        let dropped = refused.trampolines_refused();
        assert!(dropped.contains(&Feature::Files), "{dropped:?}");
        assert!(refused.refuses_trampolines() && !refused.serves(Feature::Files));
        assert!(refused.serves(Feature::Fork));
        // One alternative per feature.
        for f in features() {
            let alts: Vec<u8> = plan
                .programs()
                .filter(|p| p.feature == f)
                .map(|p| p.alt)
                .collect();
            assert!(alts.windows(2).all(|w| w[0] == w[1]), "{f:?}: {alts:?}");
        }
        let mut dropped = plan;
        dropped.drop_feature(Feature::Network);
        assert!(!dropped.hooks(false, false).contains_key("network"));
    }
}
