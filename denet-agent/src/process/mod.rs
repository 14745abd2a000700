//! The process table: kernel events become processes and files. `collector` reads
//! the ring buffer into `tracker` (processes) and `files` (open files); `sampler`
//! reads the live tree at every interval; `proc_tree` and `procfs` are the /proc
//! fallback when eBPF is unavailable. Produces the records of `crate::trace`.

pub mod collector;
pub mod files;
pub mod proc_tree;
pub mod procfs;
pub mod sampler;
pub mod tracker;

/// Splits a wait status into (exit_code, signal, core_dumped).
pub fn decode_wait_status(raw: u32) -> (Option<i32>, Option<i32>, bool) {
    let sig = (raw & 0x7f) as i32;
    if sig == 0 {
        (Some(((raw >> 8) & 0xff) as i32), None, false)
    } else {
        (None, Some(sig), raw & 0x80 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_wait_status(3 << 8), (Some(3), None, false));
        assert_eq!(decode_wait_status(9), (None, Some(9), false));
        assert_eq!(decode_wait_status(0x80 | 11), (None, Some(11), true));
        assert_eq!(decode_wait_status(0), (Some(0), None, false));
    }
}
