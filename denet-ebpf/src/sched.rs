//! Where the time went: on CPU, waiting for a CPU, in uninterruptible sleep (mostly
//! disk), in interruptible sleep. A per-thread state machine driven by sched_switch
//! and sched_wakeup; the time between two transitions goes to the state left.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use denet_common::{
    counter, EventKind, SchedSpanEvent, TaskState, TASK_BLOCKED_IO, TASK_RUNNABLE, TASK_RUNNING,
    TASK_SLEEPING,
};

use denet_common::run_flag;

use crate::{bump, dropped, header, off, read_at, run_of, stats, wakeup_flags, wants, EVENTS};

/// Scheduler state of every thread of the tracked processes, keyed by tid.
#[map]
pub(crate) static TASK_STATE: HashMap<u32, TaskState> =
    HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// `prev_state` bits (include/linux/sched.h).
const STATE_INTERRUPTIBLE: u64 = 0x1;
const STATE_UNINTERRUPTIBLE: u64 = 0x2;
const STATE_DEAD: u64 = 0x80;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Charges the time since the thread's last transition to the state it leaves
/// (and, with `--events`, reports the span).
#[inline(always)]
fn leave(st: &TaskState, now: u64, tgid: u32, tid: u32, run: u32) {
    let d = now.saturating_sub(st.since_ns);
    if wants(run, run_flag::EVENTS) {
        let event = SchedSpanEvent {
            header: header(EventKind::RawSched, tid, tgid),
            state: st.state,
            _pad: 0,
            duration_ns: d,
        };
        if EVENTS
            .output::<SchedSpanEvent>(&event, wakeup_flags())
            .is_err()
        {
            dropped(&event.header);
        }
    }
    let Some(s) = stats::of(tgid) else { return };
    match st.state {
        TASK_RUNNING => stats::add(&mut s.oncpu_ns, d),
        TASK_RUNNABLE => {
            stats::add(&mut s.cpu_wait_ns, d);
            stats::add(&mut s.runq_waits, 1);
            let b = stats::bucket_us(d);
            if let Some(slot) = s.runq_hist.get_mut(b) {
                stats::add32(slot, 1);
            }
        }
        TASK_BLOCKED_IO => stats::add(&mut s.io_wait_ns, d),
        _ => stats::add(&mut s.sleep_ns, d),
    }
}

#[inline(always)]
fn enter(tid: u32, tgid: u32, state: u32, now: u64) {
    let st = TaskState {
        since_ns: now,
        state,
        tgid,
    };
    if TASK_STATE.insert(&tid, &st, 0).is_err() {
        bump(counter::STATS_INSERT_ERRORS);
    }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`, in the context of `prev`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let t = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_tgid = (pid_tgid >> 32) as u32;
    let prev_run = run_of(prev_tgid);
    if prev_run != 0 {
        let prev_tid = pid_tgid as u32;
        // SAFETY: the value is copied out before the map is written again.
        if let Some(st) = unsafe { TASK_STATE.get(&prev_tid) } {
            let st = *st;
            leave(&st, t, prev_tgid, prev_tid, prev_run);
        }
        let preempt: u64 = ctx.arg(0);
        let prev_state: u64 = ctx.arg(3);
        if prev_state & STATE_DEAD != 0 {
            let _ = TASK_STATE.remove(&prev_tid);
        } else {
            let state = if preempt & 0xff != 0 || prev_state == 0 {
                TASK_RUNNABLE
            } else if prev_state & STATE_UNINTERRUPTIBLE != 0 {
                TASK_BLOCKED_IO
            } else if prev_state & STATE_INTERRUPTIBLE != 0 {
                TASK_SLEEPING
            } else {
                // Stopped, traced, ...: not running and not waiting for a CPU.
                TASK_SLEEPING
            };
            enter(prev_tid, prev_tgid, state, t);
        }
    }
    let next: *const u8 = ctx.arg(2);
    let next_tgid: u32 = read_at(next, off!(task_tgid));
    let next_run = run_of(next_tgid);
    if next_run != 0 {
        let next_tid: u32 = read_at(next, off!(task_pid));
        // SAFETY: copied out before the map is written again.
        if let Some(st) = unsafe { TASK_STATE.get(&next_tid) } {
            let st = *st;
            leave(&st, t, next_tgid, next_tid, next_run);
        }
        enter(next_tid, next_tgid, TASK_RUNNING, t);
    }
    0
}

#[inline(always)]
fn wakeup(ctx: &RawTracePointContext) {
    let p: *const u8 = ctx.arg(0);
    let tgid: u32 = read_at(p, off!(task_tgid));
    let run = run_of(tgid);
    if run == 0 {
        return;
    }
    let tid: u32 = read_at(p, off!(task_pid));
    let t = now();
    // SAFETY: copied out before the map is written again.
    if let Some(st) = unsafe { TASK_STATE.get(&tid) } {
        let st = *st;
        if st.state == TASK_RUNNING || st.state == TASK_RUNNABLE {
            return;
        }
        leave(&st, t, tgid, tid, run);
    }
    enter(tid, tgid, TASK_RUNNABLE, t);
}

/// `sched_wakeup(struct task_struct *p)`: a sleeping thread becomes runnable.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    wakeup(&ctx);
    0
}

/// `sched_wakeup_new(struct task_struct *p)`: a new thread becomes runnable.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    wakeup(&ctx);
    0
}

/// A thread exits (called from sched_process_exit, in its context): charge its
/// running slice so far and forget it.
#[inline(always)]
pub(crate) fn thread_exit(tid: u32, tgid: u32, run: u32) {
    // SAFETY: copied out before the map is written again.
    if let Some(st) = unsafe { TASK_STATE.get(&tid) } {
        let st = *st;
        leave(&st, now(), tgid, tid, run);
    }
    let _ = TASK_STATE.remove(&tid);
}
