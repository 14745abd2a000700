//! TCP and UDP payload bytes per process, from the socket layer's
//! `sock_send_length`/`sock_recv_length` tracepoints (every protocol passes there;
//! loopback included), in the context of the sending or receiving task.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::{is_tracked, off, read_at, stats};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

/// Bytes moved by the current task on an internet TCP/UDP socket, or 0.
#[inline(always)]
fn inet_bytes(ctx: &RawTracePointContext) -> (u32, u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_tracked(tgid) {
        return (tgid, 0);
    }
    let ret: i64 = ctx.arg::<u64>(1) as i32 as i64;
    if ret <= 0 {
        return (tgid, 0);
    }
    let sk: *const u8 = ctx.arg(0);
    let family: u16 = read_at(sk, off!(sock_family));
    let protocol: u16 = read_at(sk, off!(sock_protocol));
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
    {
        (tgid, ret as u64)
    } else {
        (tgid, 0)
    }
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let (tgid, n) = inet_bytes(&ctx);
    if n > 0 {
        if let Some(s) = stats::of(tgid) {
            stats::add(&mut s.net_tx_bytes, n);
        }
    }
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let (tgid, n) = inet_bytes(&ctx);
    if n > 0 {
        if let Some(s) = stats::of(tgid) {
            stats::add(&mut s.net_rx_bytes, n);
        }
    }
    0
}
