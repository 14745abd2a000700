//! Syscall counts per process (at sys_enter, so calls that never return, like
//! exit_group, count too) and the hooks of the per-file accounting (at sys_exit,
//! where the result is known). Both run for every syscall on the machine, so the
//! tracked check comes first. Where the kernel takes trampolines, the file
//! accounting comes from `file_hooks` instead (only the callers of the file syscalls
//! pay) and these leave files alone.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use denet_common::{run_flag, EventKind, SYSCALL_SLOTS};

use crate::{files, off, read_at, run_of, stats::SYSCALLS, wants};

// x86_64 syscall numbers of the file accounting.
pub(crate) const SYS_READ: u64 = 0;
pub(crate) const SYS_WRITE: u64 = 1;
pub(crate) const SYS_OPEN: u64 = 2;
pub(crate) const SYS_CLOSE: u64 = 3;
pub(crate) const SYS_PREAD64: u64 = 17;
pub(crate) const SYS_PWRITE64: u64 = 18;
pub(crate) const SYS_READV: u64 = 19;
pub(crate) const SYS_WRITEV: u64 = 20;
pub(crate) const SYS_CREAT: u64 = 85;
pub(crate) const SYS_OPENAT: u64 = 257;
pub(crate) const SYS_PREADV: u64 = 295;
pub(crate) const SYS_PWRITEV: u64 = 296;
pub(crate) const SYS_PREADV2: u64 = 327;
pub(crate) const SYS_PWRITEV2: u64 = 328;
pub(crate) const SYS_OPENAT2: u64 = 437;
pub(crate) const SYS_SENDFILE: u64 = 40;
pub(crate) const SYS_SPLICE: u64 = 275;
pub(crate) const SYS_COPY_FILE_RANGE: u64 = 326;
pub(crate) const SYS_CHDIR: u64 = 80;
pub(crate) const SYS_FCHDIR: u64 = 81;
pub(crate) const SYS_DUP: u64 = 32;
pub(crate) const SYS_DUP2: u64 = 33;
pub(crate) const SYS_FCNTL: u64 = 72;
pub(crate) const SYS_DUP3: u64 = 292;
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

const AT_FDCWD: i32 = -100;
const O_CREAT: u32 = 0o100;
const O_WRONLY: u32 = 0o1;
const O_TRUNC: u32 = 0o1000;

/// `sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let run = run_of(tgid);
    if run == 0 {
        return 0;
    }
    let id: u64 = ctx.arg(1);
    // A run that does not count syscalls has no SYSCALLS entries: the lookup misses
    // and nothing is counted.
    if let Some(counts) = SYSCALLS.get_ptr_mut(&tgid) {
        let slot = id as usize;
        if slot < SYSCALL_SLOTS {
            // SAFETY: this CPU's slot; index checked against the array length.
            unsafe {
                if let Some(c) = (*counts).counts.get_mut(slot) {
                    *c += 1;
                }
            }
        }
    }
    if id == SYS_CLOSE && files_here(run, false) {
        let regs: *const u8 = ctx.arg(0);
        let fd: u64 = read_at(regs, off!(regs_di));
        files::close(tgid, pid_tgid as u32, fd as u32);
    }
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`. The registers still hold the
/// arguments: `orig_ax` is the syscall number, `di`/`si`/`dx` arguments 0-2.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    returned(regs, ctx.arg(1), None)
}

/// Whether `run` wants its files counted by this path: the trampolines
/// (`trampoline`) or the raw syscall hooks.
#[inline(always)]
pub(crate) fn files_here(run: u32, trampoline: bool) -> bool {
    wants(run, run_flag::FILES) && wants(run, run_flag::FILE_TRAMPOLINES) == trampoline
}

/// A file syscall returned `ret` with its arguments in `regs`. `nr` is the syscall
/// number when the caller is a trampoline on its function; the raw `sys_exit` hook
/// reads it from `regs`.
#[inline(always)]
pub(crate) fn returned(regs: *const u8, ret: u64, nr: Option<u64>) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let run = run_of(tgid);
    if run == 0 || !files_here(run, nr.is_some()) {
        return 0;
    }
    let ret = ret as i64;
    if ret < 0 {
        return 0;
    }
    let nr: u64 = match nr {
        Some(nr) => nr,
        None => read_at(regs, off!(regs_orig_ax)),
    };
    let tid = pid_tgid as u32;
    match nr {
        SYS_READ | SYS_PREAD64 | SYS_READV | SYS_PREADV | SYS_PREADV2 => {
            let fd: u64 = read_at(regs, off!(regs_di));
            files::add(tgid, fd as u32, ret as u64, false);
        }
        SYS_WRITE | SYS_PWRITE64 | SYS_WRITEV | SYS_PWRITEV | SYS_PWRITEV2 => {
            let fd: u64 = read_at(regs, off!(regs_di));
            files::add(tgid, fd as u32, ret as u64, true);
        }
        // In-kernel copies: bytes leave one fd and enter another.
        SYS_SENDFILE => {
            let out_fd: u64 = read_at(regs, off!(regs_di));
            let in_fd: u64 = read_at(regs, off!(regs_si));
            files::add(tgid, in_fd as u32, ret as u64, false);
            files::add(tgid, out_fd as u32, ret as u64, true);
        }
        SYS_SPLICE | SYS_COPY_FILE_RANGE => {
            let in_fd: u64 = read_at(regs, off!(regs_di));
            let out_fd: u64 = read_at(regs, off!(regs_dx));
            files::add(tgid, in_fd as u32, ret as u64, false);
            files::add(tgid, out_fd as u32, ret as u64, true);
        }
        SYS_OPENAT | SYS_OPENAT2 => {
            let dirfd: u64 = read_at(regs, off!(regs_di));
            let path: u64 = read_at(regs, off!(regs_si));
            // openat2 passes a struct open_how whose first field is the flags.
            let flags: u64 = if nr == SYS_OPENAT {
                read_at(regs, off!(regs_dx))
            } else {
                let how: u64 = read_at(regs, off!(regs_dx));
                files::user_u64(how)
            };
            files::opened(tgid, tid, ret as u32, path, flags as u32, dirfd as i32);
        }
        SYS_OPEN => {
            let path: u64 = read_at(regs, off!(regs_di));
            let flags: u64 = read_at(regs, off!(regs_si));
            files::opened(tgid, tid, ret as u32, path, flags as u32, AT_FDCWD);
        }
        SYS_CREAT => {
            let path: u64 = read_at(regs, off!(regs_di));
            files::opened(
                tgid,
                tid,
                ret as u32,
                path,
                O_CREAT | O_WRONLY | O_TRUNC,
                AT_FDCWD,
            );
        }
        // The working directory, to resolve relative paths exactly.
        SYS_CHDIR => {
            let path: u64 = read_at(regs, off!(regs_di));
            files::emit_path(EventKind::Chdir, tgid, tid, u32::MAX, path, 0, AT_FDCWD);
        }
        SYS_FCHDIR => {
            let fd: u64 = read_at(regs, off!(regs_di));
            files::emit_path(EventKind::Chdir, tgid, tid, fd as u32, 0, 0, AT_FDCWD);
        }
        SYS_DUP | SYS_DUP2 | SYS_DUP3 => {
            let old_fd: u64 = read_at(regs, off!(regs_di));
            files::duplicated(tgid, tid, old_fd as u32, ret as u32);
        }
        SYS_FCNTL => {
            let cmd: u64 = read_at(regs, off!(regs_si));
            if cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC {
                let old_fd: u64 = read_at(regs, off!(regs_di));
                files::duplicated(tgid, tid, old_fd as u32, ret as u32);
            }
        }
        _ => {}
    }
    0
}
