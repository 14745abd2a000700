//! The per-file accounting on kernels that take trampolines: fexit programs on the
//! x86-64 syscall functions of the file syscalls (and an fentry on close), so only
//! the tasks that make those calls pay, instead of every syscall of every task on
//! the machine passing the raw syscall hooks. Each function takes the syscall's
//! `struct pt_regs *`, the same registers `sys_exit` reads, so the accounting is
//! shared (`syscalls::returned`).

use crate::{
    files, off, read_at, run_of,
    syscalls::{
        files_here, returned, SYS_CHDIR, SYS_COPY_FILE_RANGE, SYS_CREAT, SYS_DUP, SYS_DUP2,
        SYS_DUP3, SYS_FCHDIR, SYS_FCNTL, SYS_OPEN, SYS_OPENAT, SYS_OPENAT2, SYS_PREAD64,
        SYS_PREADV, SYS_PREADV2, SYS_PWRITE64, SYS_PWRITEV, SYS_PWRITEV2, SYS_READ, SYS_READV,
        SYS_SENDFILE, SYS_SPLICE, SYS_WRITE, SYS_WRITEV,
    },
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

/// One fexit program per syscall function: `long __x64_sys_NAME(const struct pt_regs *)`.
macro_rules! on_return {
    ($($prog:ident = $function:literal => $nr:expr;)*) => {$(
        #[fexit(function = $function)]
        pub fn $prog(ctx: FExitContext) -> i32 {
            returned(ctx.arg(0), ctx.arg(1), Some($nr))
        }
    )*};
}

on_return! {
    f_read = "__x64_sys_read" => SYS_READ;
    f_write = "__x64_sys_write" => SYS_WRITE;
    f_pread64 = "__x64_sys_pread64" => SYS_PREAD64;
    f_pwrite64 = "__x64_sys_pwrite64" => SYS_PWRITE64;
    f_readv = "__x64_sys_readv" => SYS_READV;
    f_writev = "__x64_sys_writev" => SYS_WRITEV;
    f_preadv = "__x64_sys_preadv" => SYS_PREADV;
    f_pwritev = "__x64_sys_pwritev" => SYS_PWRITEV;
    f_preadv2 = "__x64_sys_preadv2" => SYS_PREADV2;
    f_pwritev2 = "__x64_sys_pwritev2" => SYS_PWRITEV2;
    f_sendfile = "__x64_sys_sendfile64" => SYS_SENDFILE;
    f_splice = "__x64_sys_splice" => SYS_SPLICE;
    f_copy_range = "__x64_sys_copy_file_range" => SYS_COPY_FILE_RANGE;
    f_open = "__x64_sys_open" => SYS_OPEN;
    f_openat = "__x64_sys_openat" => SYS_OPENAT;
    f_openat2 = "__x64_sys_openat2" => SYS_OPENAT2;
    f_creat = "__x64_sys_creat" => SYS_CREAT;
    f_chdir = "__x64_sys_chdir" => SYS_CHDIR;
    f_fchdir = "__x64_sys_fchdir" => SYS_FCHDIR;
    f_dup = "__x64_sys_dup" => SYS_DUP;
    f_dup2 = "__x64_sys_dup2" => SYS_DUP2;
    f_dup3 = "__x64_sys_dup3" => SYS_DUP3;
    f_fcntl = "__x64_sys_fcntl" => SYS_FCNTL;
}

/// `long __x64_sys_close(const struct pt_regs *)`, on entry: the fd's totals are
/// sent before it can be reused (as `sys_enter` does).
#[fentry(function = "__x64_sys_close")]
pub fn f_close(ctx: FEntryContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let run = run_of(tgid);
    if run == 0 || !files_here(run, true) {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let fd: u64 = read_at(regs, off!(regs_di));
    files::close(tgid, pid_tgid as u32, fd as u32);
    0
}
