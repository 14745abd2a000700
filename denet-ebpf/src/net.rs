//! TCP and UDP payload bytes per process, from the socket layer's
//! `sock_send_length`/`sock_recv_length` tracepoints (6.3 on; every protocol passes
//! there, loopback included), or on older kernels from the return of the internet
//! family's `sendmsg`/`recvmsg` handlers, in the context of the sending or receiving
//! task.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, raw_tracepoint},
    programs::{FExitContext, RawTracePointContext},
};

use crate::{is_tracked, off, read_at, stats};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

/// The bytes a socket call that returned `ret` moved, when `sk` is an internet
/// TCP or UDP socket; else 0.
#[inline(always)]
fn inet_bytes(sk: *const u8, ret: u64) -> u64 {
    let ret = ret as i32 as i64;
    if ret <= 0 {
        return 0;
    }
    let family: u16 = read_at(sk, off!(sock_family));
    let protocol: u16 = read_at(sk, off!(sock_protocol));
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
    {
        ret as u64
    } else {
        0
    }
}

/// The current task's process, when it is tracked.
#[inline(always)]
fn tracked_tgid() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    is_tracked(tgid).then_some(tgid)
}

#[inline(always)]
fn add_tx(tgid: u32, n: u64) {
    if n > 0 {
        if let Some(s) = stats::of(tgid) {
            stats::add(&mut s.net_tx_bytes, n);
        }
    }
}

#[inline(always)]
fn add_rx(tgid: u32, n: u64) {
    if n > 0 {
        if let Some(s) = stats::of(tgid) {
            stats::add(&mut s.net_rx_bytes, n);
        }
    }
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    if let Some(tgid) = tracked_tgid() {
        add_tx(tgid, inet_bytes(ctx.arg(0), ctx.arg(1)));
    }
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    if let Some(tgid) = tracked_tgid() {
        add_rx(tgid, inet_bytes(ctx.arg(0), ctx.arg(1)));
    }
    0
}

// Before 6.3: the return of the internet family's handlers, which `sock_sendmsg`
// reaches through `sock->ops` (a direct call under INDIRECT_CALL_INET, in another
// file, so never inlined; `sock_sendmsg` itself is inlined into its callers in
// net/socket.c, and a trampoline on it sees only other modules' calls).

/// Returning from `int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet_sendmsg")]
pub fn inet_sendmsg(ctx: FExitContext) -> i32 {
    sent(&ctx, 3)
}

/// Returning from `int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size)`.
#[fexit(function = "inet6_sendmsg")]
pub fn inet6_sendmsg(ctx: FExitContext) -> i32 {
    sent(&ctx, 3)
}

/// Returning from `int inet_recvmsg(struct socket *sock, struct msghdr *msg, size_t size,
/// int flags)`.
#[fexit(function = "inet_recvmsg")]
pub fn inet_recvmsg(ctx: FExitContext) -> i32 {
    received(&ctx, 4)
}

/// Returning from `int inet6_recvmsg(struct socket *sock, struct msghdr *msg, size_t size,
/// int flags)`.
#[fexit(function = "inet6_recvmsg")]
pub fn inet6_recvmsg(ctx: FExitContext) -> i32 {
    received(&ctx, 4)
}

/// The socket's `sk` and the return value (after `args` arguments) of a handler.
#[inline(always)]
fn socket_call(ctx: &FExitContext, args: usize) -> (*const u8, u64) {
    let sock: *const u8 = ctx.arg(0);
    (read_at(sock, off!(socket_sk)), ctx.arg(args))
}

#[inline(always)]
fn sent(ctx: &FExitContext, args: usize) -> i32 {
    if let Some(tgid) = tracked_tgid() {
        let (sk, ret) = socket_call(ctx, args);
        add_tx(tgid, inet_bytes(sk, ret));
    }
    0
}

#[inline(always)]
fn received(ctx: &FExitContext, args: usize) -> i32 {
    if let Some(tgid) = tracked_tgid() {
        let (sk, ret) = socket_call(ctx, args);
        add_rx(tgid, inet_bytes(sk, ret));
    }
    0
}
