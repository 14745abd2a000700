//! Block I/O issued by a process: bytes and operations counted when a bio is queued
//! (`block_bio_queue`, in the submitting task's context), latency measured from then
//! to the completion of the request that carries it (`block_rq_complete`, matched
//! through the request's first bio). Background writeback of dirty pages is issued by
//! kernel threads and so is not attributed to the process that dirtied them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use denet_common::{counter, run_flag, BlockIoEvent, EventKind};

use crate::{
    bump, dropped, header, is_tracked, off, read_at, run_of, stats, wakeup_flags, wants, EVENTS,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct BioStart {
    ts_ns: u64,
    tgid: u32,
    tid: u32,
    op: u32,
    bytes: u32,
}

/// Bios of tracked processes in flight, by address. LRU so bios merged into another
/// request (never seen at completion) age out instead of filling the map.
#[map]
static BIO_START: LruHashMap<u64, BioStart> = LruHashMap::with_max_entries(16_384, 0);

const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// `block_bio_queue(struct bio *bio)`.
#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let bio: *const u8 = ctx.arg(0);
    let op: u32 = read_at::<u32>(bio, off!(bio_opf)) & REQ_OP_MASK;
    let size: u32 = read_at(bio, off!(bio_size));
    let Some(s) = stats::of(tgid) else { return 0 };
    match op {
        REQ_OP_READ => {
            stats::add(&mut s.blk_read_bytes, u64::from(size));
            stats::add(&mut s.blk_read_ops, 1);
        }
        REQ_OP_WRITE => {
            stats::add(&mut s.blk_write_bytes, u64::from(size));
            stats::add(&mut s.blk_write_ops, 1);
        }
        _ => return 0,
    }
    let start = BioStart {
        // SAFETY: plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid: pid_tgid as u32,
        op,
        bytes: size,
    };
    let _ = BIO_START.insert(&(bio as u64), &start, 0);
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`,
/// in any context (often an interrupt).
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let bio: u64 = read_at(rq, off!(request_bio));
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { BIO_START.get(&bio) }).copied() else {
        return 0;
    };
    let _ = BIO_START.remove(&bio);
    // SAFETY: plain helper call without arguments.
    let lat = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    if wants(run_of(start.tgid), run_flag::EVENTS) {
        let event = BlockIoEvent {
            header: header(EventKind::RawBlock, start.tid, start.tgid),
            op: start.op,
            bytes: start.bytes,
            latency_ns: lat,
        };
        if EVENTS
            .output::<BlockIoEvent>(&event, wakeup_flags())
            .is_err()
        {
            dropped(&event.header);
        }
    }
    match stats::of(start.tgid) {
        Some(s) => {
            if let Some(slot) = s.blk_lat_hist.get_mut(stats::bucket_us(lat)) {
                stats::add32(slot, 1);
            }
        }
        None => {
            bump(counter::BLK_UNMATCHED);
        }
    }
    0
}
