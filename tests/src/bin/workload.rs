//! Workloads with known ground truth for the integration tests.
//!
//! Each subcommand does one precisely known thing and, where the truth is only known
//! from inside (rusage, VmHWM), writes it as JSON to the file given with `--truth`.

use std::{
    fs,
    io::Write,
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!(
        "usage: workload burn MS | alloc MIB HOLD_MS [TRUTH] | write BYTES PATH | \
         rusage-child TRUTH -- CMD... | alloc-then-exec MIB -- CMD... | getppid K | \
         forkstorm WORKERS CHILDREN | threads N MS | spin ITERATIONS | read-direct PATH | tcp-pair BYTES | pingpong ROUNDS | exit CODE | signal SIG"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

/// Spin on the CPU for `ms` milliseconds of its own CPU time.
fn burn(ms: u64) {
    let target = Duration::from_millis(ms);
    let start = cpu_time();
    let mut x: u64 = 1;
    while cpu_time() - start < target {
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        std::hint::black_box(x);
    }
}

/// Spin for `ms` milliseconds of this thread's CPU time.
fn burn_thread(ms: u64) {
    let target = Duration::from_millis(ms);
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let start = now();
    let mut x: u64 = 1;
    while now() - start < target {
        for _ in 0..10_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn vm_hwm_kb() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Touch `mib` MiB page by page, hold it, free it.
fn alloc(mib: usize, hold_ms: u64) -> Vec<u8> {
    // Zeroed pages are mapped lazily; writing one byte per page makes each resident.
    let mut v: Vec<u8> = vec![0; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    std::thread::sleep(Duration::from_millis(hold_ms));
    v
}

// The child is reaped by wait4 below (std's wait would not give its rusage).
#[allow(clippy::zombie_processes)]
fn spawn_and_wait4(cmd: &[String]) -> (i32, libc::rusage) {
    let child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("workload: cannot run {:?}: {e}", cmd[0]);
            std::process::exit(3)
        });
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointers; the pid is our child.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    (status, ru)
}

fn tv_ns(tv: libc::timeval) -> u64 {
    tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000
}

fn after_dashes(args: &[String], from: usize) -> &[String] {
    match args[from..].iter().position(|a| a == "--") {
        Some(p) if from + p + 1 < args.len() => &args[from + p + 1..],
        _ => usage(),
    }
}

fn read_direct(path: &str) -> u64 {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| {
            eprintln!("workload: open {path} O_DIRECT: {e}");
            std::process::exit(4)
        });
    // O_DIRECT needs an aligned buffer: 1 MiB aligned to 4 KiB.
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap_or_else(|_| usage());
    // SAFETY: non-zero size layout; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        std::process::exit(4);
    }
    // SAFETY: buf is valid for layout.size() bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, layout.size()) };
    let mut total = 0u64;
    loop {
        match std::io::Read::read(&mut f, slice) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                eprintln!("workload: read: {e}");
                std::process::exit(4)
            }
        }
    }
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    total
}

fn pingpong(rounds: u64) {
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: plain pipe/fork/read/write on descriptors we own.
    unsafe {
        if libc::pipe(a.as_mut_ptr()) != 0 || libc::pipe(b.as_mut_ptr()) != 0 {
            std::process::exit(4);
        }
        let mut byte = [0u8; 1];
        match libc::fork() {
            0 => {
                for _ in 0..rounds {
                    if libc::read(a[0], byte.as_mut_ptr().cast(), 1) != 1 {
                        libc::_exit(4);
                    }
                    libc::write(b[1], byte.as_ptr().cast(), 1);
                }
                libc::_exit(0);
            }
            pid if pid > 0 => {
                for _ in 0..rounds {
                    libc::write(a[1], byte.as_ptr().cast(), 1);
                    if libc::read(b[0], byte.as_mut_ptr().cast(), 1) != 1 {
                        std::process::exit(4);
                    }
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            _ => std::process::exit(5),
        }
    }
}

fn tcp_pair(bytes: usize) {
    use std::io::{Read, Write};
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| std::process::exit(4));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| std::process::exit(4));
    // SAFETY: the child only connects, writes and exits.
    match unsafe { libc::fork() } {
        0 => {
            let mut s =
                std::net::TcpStream::connect(addr).unwrap_or_else(|_| std::process::exit(4));
            let chunk = vec![7u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n])
                    .unwrap_or_else(|_| std::process::exit(4));
                left -= n;
            }
            drop(s);
            // SAFETY: plain exit of the child.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let (mut conn, _) = listener.accept().unwrap_or_else(|_| std::process::exit(4));
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(_) => std::process::exit(4),
                }
            }
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            println!("{got}");
        }
        _ => std::process::exit(5),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("burn") => burn(arg(&args, 2)),
        Some("alloc") => {
            let v = alloc(arg(&args, 2), arg(&args, 3));
            if let Some(truth) = args.get(4) {
                let json = format!("{{\"vm_hwm_kb\":{}}}", vm_hwm_kb());
                fs::write(truth, json).unwrap_or_else(|_| std::process::exit(4));
            }
            drop(v);
        }
        Some("alloc-then-exec") => {
            let v = alloc(arg(&args, 2), 0);
            let (status, _) = spawn_and_wait4(after_dashes(&args, 3));
            drop(v);
            std::process::exit(libc::WEXITSTATUS(status));
        }
        Some("rusage-child") => {
            let truth: String = arg(&args, 2);
            let (status, ru) = spawn_and_wait4(after_dashes(&args, 3));
            let json = format!(
                "{{\"utime_ns\":{},\"stime_ns\":{},\"maxrss_kb\":{},\"status\":{}}}",
                tv_ns(ru.ru_utime),
                tv_ns(ru.ru_stime),
                ru.ru_maxrss,
                status
            );
            fs::write(truth, json).unwrap_or_else(|_| std::process::exit(4));
        }
        Some("write") => {
            let bytes: usize = arg(&args, 2);
            let path: String = arg(&args, 3);
            let mut f = fs::File::create(path).unwrap_or_else(|_| std::process::exit(4));
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                f.write_all(&chunk[..n])
                    .unwrap_or_else(|_| std::process::exit(4));
                left -= n;
            }
        }
        Some("getppid") => {
            let k: u64 = arg(&args, 2);
            for _ in 0..k {
                // SAFETY: getppid has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
        }
        Some("forkstorm") => {
            let workers: usize = arg(&args, 2);
            let children: usize = arg(&args, 3);
            let start = Instant::now();
            let mut pids = Vec::new();
            for _ in 0..workers {
                // SAFETY: the child only forks, waits and _exits.
                match unsafe { libc::fork() } {
                    // SAFETY: in the child: only fork and _exit, both async-signal-safe.
                    0 => unsafe {
                        for _ in 0..children {
                            if libc::fork() == 0 {
                                libc::_exit(0);
                            }
                        }
                        while libc::wait(std::ptr::null_mut()) > 0 {}
                        libc::_exit(0);
                    },
                    pid if pid > 0 => pids.push(pid),
                    _ => std::process::exit(5),
                }
            }
            for pid in pids {
                // SAFETY: waiting for our own children.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            eprintln!("forkstorm: {:?}", start.elapsed());
        }
        Some("threads") => {
            // N threads each burn MS of their own CPU time.
            let n: usize = arg(&args, 2);
            let ms: u64 = arg(&args, 3);
            let handles: Vec<_> = (0..n)
                .map(|_| std::thread::spawn(move || burn_thread(ms)))
                .collect();
            for h in handles {
                let _ = h.join();
            }
        }
        Some("spin") => {
            // A fixed amount of CPU work (benchmarks: wall time is what varies).
            let iters: u64 = arg(&args, 2);
            let mut x: u64 = 1;
            for _ in 0..iters {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x ^= x >> 29;
            }
            std::hint::black_box(x);
        }
        Some("read-direct") => {
            // Read a whole file with O_DIRECT (bypassing the page cache): every byte
            // comes from the block device. Prints the byte count.
            let path: String = arg(&args, 2);
            println!("{}", read_direct(&path));
        }
        Some("pingpong") => {
            // ROUNDS one-byte round trips between two processes over two pipes: a
            // context switch per message.
            let rounds: u64 = arg(&args, 2);
            pingpong(rounds);
        }
        Some("tcp-pair") => {
            // Sends BYTES from a forked child to this process over loopback TCP.
            let bytes: usize = arg(&args, 2);
            tcp_pair(bytes);
        }
        Some("exit") => std::process::exit(arg(&args, 2)),
        Some("signal") => {
            let sig: i32 = arg(&args, 2);
            // Restore the default action so the signal kills us (SIGSEGV included).
            // SAFETY: plain libc calls on our own process.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            std::process::exit(6);
        }
        _ => usage(),
    }
}
