//! An aya `EbpfLoader` without aya's own parse of the kernel BTF.
//!
//! `EbpfLoader::new()` in aya 0.14 always reads and parses `/sys/kernel/btf/vmlinux`
//! (about 25 ms and 10 MiB on a 5.5 MB BTF), even when the caller then passes
//! `.btf(None)`, as the agent does: its programs carry no CO-RE relocations and the
//! struct offsets come from the agent's own, lighter BTF reader. So the loader is
//! created on a short-lived thread whose file opens fail (a seccomp filter on that
//! thread only, which needs no privilege): aya's parse fails at once and the loader
//! starts without BTF. Any failure to set the filter up falls back to a plain
//! `EbpfLoader::new()`: slower, same result.

use aya::EbpfLoader;

/// A loader with no kernel BTF, built without parsing it where possible.
pub fn without_kernel_btf() -> EbpfLoader<'static> {
    std::thread::Builder::new()
        .name("denet-loader".into())
        .spawn(|| {
            // The filter must be in place before `new()`; if it is not, `new()`
            // simply parses the BTF as usual.
            let _ = deny_file_opens_on_this_thread();
            loader_set_to_no_btf()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or_else(loader_set_to_no_btf)
}

fn loader_set_to_no_btf() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// Makes open/openat/openat2 fail with ENOENT for the calling thread (and threads it
/// starts); every other syscall and every other thread is unaffected.
#[cfg(target_arch = "x86_64")]
fn deny_file_opens_on_this_thread() -> std::io::Result<()> {
    use libc::{sock_filter, sock_fprog};
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    // seccomp_data: nr at offset 0, arch at offset 4.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let ld = |k: u32| sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // Jump `jt` instructions ahead when equal, else fall through.
    let jeq = |k: u32, jt: u8| sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf: 0,
        k,
    };
    let ret = |k: u32| sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        ld(ARCH),
        // Another ABI (x32/ia32 entry): allow, this only shortens a parse.
        jeq(AUDIT_ARCH_X86_64, 1),
        ret(libc::SECCOMP_RET_ALLOW),
        ld(NR),
        jeq(libc::SYS_open as u32, 3),
        jeq(libc::SYS_openat as u32, 2),
        jeq(libc::SYS_openat2 as u32, 1),
        ret(libc::SECCOMP_RET_ALLOW),
        ret(libc::SECCOMP_RET_ERRNO | libc::ENOENT as u32),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; no_new_privs applies to this thread only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `prog` points to `filter`, both alive for the call; without
    // SECCOMP_FILTER_FLAG_TSYNC the filter is attached to this thread only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn deny_file_opens_on_this_thread() -> std::io::Result<()> {
    Err(std::io::Error::other("only on x86_64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtered_thread_cannot_open_but_others_can() {
        let denied = std::thread::spawn(|| {
            deny_file_opens_on_this_thread().expect("seccomp filter");
            std::fs::File::open("/proc/self/status").map(|_| ())
        })
        .join()
        .unwrap();
        assert_eq!(
            denied.unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "opens on the filtered thread fail"
        );
        // The rest of the process is untouched.
        std::fs::File::open("/proc/self/status").expect("open on another thread");
        std::thread::spawn(|| std::fs::File::open("/proc/self/status").map(|_| ()))
            .join()
            .unwrap()
            .expect("open on a new unfiltered thread");
    }

    #[test]
    fn loader_is_built() {
        // No assertion on aya's internals: it must simply come back usable.
        let _loader = without_kernel_btf();
    }
}
