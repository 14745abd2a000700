//! Minimal reader for the kernel's raw BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the agent looks up the
//! kernel struct member offsets it needs here at load time and hands them to
//! the programs. Only what that needs is implemented: walking the type
//! section (to know where each type id lives), struct member lookup through
//! anonymous members, and tracepoint prototype arity.
//!
//! Layout (Documentation/bpf/btf.rst): a header, then a type section of
//! variable-length `btf_type` records (ids start at 1), then a string
//! section. Everything is native-endian. Every read is bounds-checked, so
//! malformed input yields an error, never a panic.
//!
//! One job, one file: the BTF reader (about 500 lines) and its tests with synthetic
//! and malformed BTF (about 340).

use std::io;

const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// `struct btf_header`: magic u16, version u8, flags u8, then five u32s.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size_or_type.
const TYPE_LEN: usize = 12;
/// Guards recursion through anonymous members and modifier chains against
/// cyclic (malformed) type graphs; real kernels nest a handful of levels.
const MAX_DEPTH: usize = 64;
/// Caps how many anonymous struct/union members one lookup may enter, so a
/// malformed graph that shares anonymous types fan-out style cannot make a
/// lookup exponential.
const MAX_VISITS: usize = 100_000;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("btf: cannot read {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("btf: bad magic {0:#06x} (expected 0xeb9f; foreign-endian BTF is not supported)")]
    BadMagic(u16),
    #[error("btf: unsupported BTF version {0}")]
    UnsupportedVersion(u8),
    #[error("btf: truncated or out-of-bounds {what} at byte {offset} (need {need} bytes, data is {len})")]
    OutOfBounds {
        what: &'static str,
        offset: usize,
        need: usize,
        len: usize,
    },
    #[error("btf: type [{id}] has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("btf: reference to type id {0}, which does not exist")]
    BadTypeId(u32),
    #[error("btf: malformed: {0}")]
    Malformed(String),
    #[error("btf: no struct named {0:?}")]
    StructNotFound(String),
    #[error("btf: struct {struct_name} has no member {member:?}")]
    MemberNotFound { struct_name: String, member: String },
    #[error("btf: {struct_name}.{member} is not byte aligned (bit offset {bit_offset}, bitfield size {bitfield_size})")]
    NotByteAligned {
        struct_name: String,
        member: String,
        bit_offset: u64,
        bitfield_size: u32,
    },
    #[error(
        "btf: no typedef btf_trace_{0} (unknown tracepoint, or kernel without tracepoint BTF)"
    )]
    TracepointNotFound(String),
    #[error("btf: btf_trace_{tracepoint} is not a pointer to a function prototype (found kind {kind} at type [{id}])")]
    NotFuncProto {
        tracepoint: String,
        id: u32,
        kind: u32,
    },
}

/// Parsed vmlinux BTF: the raw bytes plus an index of where each type lives.
pub struct Btf {
    data: Vec<u8>,
    /// Absolute byte range of the string section within `data`.
    strs: std::ops::Range<usize>,
    /// Absolute offset of each type record; index = type id, [0] is `void`.
    type_offs: Vec<usize>,
    /// (hash of the name, id) of every named STRUCT and TYPEDEF, sorted: a lookup
    /// hashes the name, walks its run and compares the names. No allocation per
    /// name, so indexing vmlinux's ~150k types takes a few milliseconds.
    by_name: Vec<(u64, u32)>,
}

/// One decoded `btf_type` record.
#[derive(Clone, Copy)]
struct Type<'a> {
    id: u32,
    info: u32,
    /// `size` for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, `type` otherwise.
    size_or_type: u32,
    /// Kind-specific trailing data (members, params, ...).
    extra: &'a [u8],
}

impl Type<'_> {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

fn read_u32(data: &[u8], offset: usize, what: &'static str) -> Result<u32, BtfError> {
    offset
        .checked_add(4)
        .and_then(|end| data.get(offset..end))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::OutOfBounds {
            what,
            offset,
            need: 4,
            len: data.len(),
        })
}

/// Absolute byte range of a section given its header offset and length.
fn section(
    data_len: usize,
    hdr_len: usize,
    off: u32,
    len: u32,
    what: &'static str,
) -> Result<std::ops::Range<usize>, BtfError> {
    let start = hdr_len.checked_add(off as usize);
    let end = start.and_then(|s| s.checked_add(len as usize));
    match (start, end) {
        (Some(start), Some(end)) if end <= data_len => Ok(start..end),
        _ => Err(BtfError::OutOfBounds {
            what,
            offset: start.unwrap_or(usize::MAX),
            need: len as usize,
            len: data_len,
        }),
    }
}

/// Size of the kind-specific data following a `btf_type` record.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

impl Btf {
    /// Read and parse the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let data = std::fs::read(VMLINUX_PATH).map_err(|source| BtfError::Read {
            path: VMLINUX_PATH,
            source,
        })?;
        Self::parse(data)
    }

    /// Validate the header, walk the type section once to record where each
    /// type id starts and index named types.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(BtfError::OutOfBounds {
                what: "btf_header",
                offset: 0,
                need: HEADER_LEN,
                len: data.len(),
            });
        }
        let magic = u16::from_ne_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        if data[2] != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion(data[2]));
        }
        let hdr_len = read_u32(&data, 4, "hdr_len")? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(BtfError::Malformed(format!(
                "hdr_len {hdr_len} outside {HEADER_LEN}..={}",
                data.len()
            )));
        }
        let types = section(
            data.len(),
            hdr_len,
            read_u32(&data, 8, "type_off")?,
            read_u32(&data, 12, "type_len")?,
            "type section",
        )?;
        let strs = section(
            data.len(),
            hdr_len,
            read_u32(&data, 16, "str_off")?,
            read_u32(&data, 20, "str_len")?,
            "string section",
        )?;

        // vmlinux has ~130k types; reserve roughly to avoid regrowth.
        let mut type_offs = Vec::with_capacity(types.len() / 24 + 1);
        type_offs.push(0); // id 0 is the implicit `void`
        let mut by_name: Vec<(u64, u32)> = Vec::new();
        let mut pos = types.start;
        while pos < types.end {
            let id = u32::try_from(type_offs.len())
                .map_err(|_| BtfError::Malformed("more than 2^32 types".into()))?;
            // The whole 12-byte header must be in the section.
            let header: &[u8; TYPE_LEN] = data[..types.end]
                .get(pos..pos.saturating_add(TYPE_LEN))
                .and_then(|h| h.try_into().ok())
                .ok_or(BtfError::OutOfBounds {
                    what: "btf_type",
                    offset: pos,
                    need: TYPE_LEN,
                    len: types.end,
                })?;
            let word = |i: usize| {
                u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let (name_off, info) = (word(0), word(4));
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = extra_len(kind, vlen).ok_or(BtfError::UnknownKind { id, kind })?;
            let end = pos + TYPE_LEN + extra;
            if end > types.end {
                return Err(BtfError::OutOfBounds {
                    what: "btf_type data",
                    offset: pos,
                    need: TYPE_LEN + extra,
                    len: types.end,
                });
            }
            if name_off as usize >= strs.len() {
                return Err(BtfError::OutOfBounds {
                    what: "string",
                    offset: strs.start.saturating_add(name_off as usize),
                    need: 1,
                    len: strs.end,
                });
            }
            type_offs.push(pos);
            // Only the kinds looked up by name are indexed: most of vmlinux's names
            // are functions, and skipping them keeps parsing fast.
            if name_off != 0 && matches!(kind, KIND_STRUCT | KIND_TYPEDEF) {
                by_name.push((name_hash(cstr_at(&data, &strs, name_off)?), id));
            }
            pos = end;
        }
        by_name.sort_unstable();

        Ok(Self {
            data,
            strs,
            type_offs,
            by_name,
        })
    }

    /// Byte offset of `member` within the struct `struct_name` (the first
    /// STRUCT of that name that has members). Members of anonymous
    /// struct/union members are searched too, their offsets added. Bitfields
    /// and other non-byte-aligned members are an error.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let st = self.find_struct(struct_name)?;
        let not_found = || BtfError::MemberNotFound {
            struct_name: struct_name.to_owned(),
            member: member.to_owned(),
        };
        let mut budget = MAX_VISITS;
        let (bit_offset, bitfield_size) = self
            .find_member(st, member.as_bytes(), 0, &mut budget)?
            .ok_or_else(not_found)?;
        if bitfield_size != 0 || bit_offset % 8 != 0 {
            return Err(BtfError::NotByteAligned {
                struct_name: struct_name.to_owned(),
                member: member.to_owned(),
                bit_offset,
                bitfield_size,
            });
        }
        u32::try_from(bit_offset / 8).map_err(|_| {
            BtfError::Malformed(format!("{struct_name}.{member} offset overflows u32"))
        })
    }

    /// Size in bytes of the struct `struct_name` (e.g. the stride of an array of them).
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(struct_name)?.size_or_type)
    }

    /// Ids of the STRUCTs and TYPEDEFs named `name`, in id order.
    fn ids_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let hash = name_hash(name.as_bytes());
        let first = self.by_name.partition_point(|&(h, _)| h < hash);
        self.by_name[first..]
            .iter()
            .take_while(move |&&(h, _)| h == hash)
            .map(|&(_, id)| id)
            .filter(move |&id| self.type_name(id).is_ok_and(|n| n == name.as_bytes()))
    }

    /// The name of type `id` (empty when it has none).
    fn type_name(&self, id: u32) -> Result<&[u8], BtfError> {
        let pos = match self.type_offs.get(id as usize) {
            Some(&pos) if id != 0 => pos,
            _ => return Err(BtfError::BadTypeId(id)),
        };
        self.str_at(read_u32(&self.data, pos, "btf_type")?)
    }

    /// The first STRUCT named `struct_name` that has members (skips forward decls).
    fn find_struct(&self, struct_name: &str) -> Result<Type<'_>, BtfError> {
        for id in self.ids_named(struct_name) {
            let t = self.ty(id)?;
            if t.kind() == KIND_STRUCT && t.vlen() > 0 {
                return Ok(t);
            }
        }
        Err(BtfError::StructNotFound(struct_name.to_owned()))
    }

    /// Whether the kernel has a function `name` that BTF describes (one fentry/fexit
    /// can attach to). A scan of every type: functions are not indexed, and this is
    /// asked only on kernels where a tracepoint is missing.
    pub fn has_function(&self, name: &str) -> bool {
        (1..self.type_offs.len() as u32).any(|id| {
            self.ty(id).is_ok_and(|t| t.kind() == KIND_FUNC)
                && self.type_name(id).is_ok_and(|n| n == name.as_bytes())
        })
    }

    /// Number of arguments of tracepoint `tracepoint`, from the prototype
    /// behind `typedef btf_trace_<tracepoint>` (a pointer to a FUNC_PROTO
    /// whose first parameter is the `void *` context, not counted).
    pub fn tracepoint_arg_count(&self, tracepoint: &str) -> Result<u32, BtfError> {
        let name = format!("btf_trace_{tracepoint}");
        let mut typedef = None;
        for id in self.ids_named(&name) {
            let t = self.ty(id)?;
            if t.kind() == KIND_TYPEDEF {
                typedef = Some(t);
                break;
            }
        }
        let typedef = typedef.ok_or_else(|| BtfError::TracepointNotFound(tracepoint.to_owned()))?;
        let not_proto = |t: Type<'_>| BtfError::NotFuncProto {
            tracepoint: tracepoint.to_owned(),
            id: t.id,
            kind: t.kind(),
        };
        let ptr = self.skip_modifiers(typedef.size_or_type)?;
        if ptr.kind() != KIND_PTR {
            return Err(not_proto(ptr));
        }
        let proto = self.skip_modifiers(ptr.size_or_type)?;
        if proto.kind() != KIND_FUNC_PROTO {
            return Err(not_proto(proto));
        }
        let params = u32::try_from(proto.vlen()).unwrap_or(u32::MAX);
        params.checked_sub(1).ok_or_else(|| {
            BtfError::Malformed(format!(
                "btf_trace_{tracepoint} prototype has no context parameter"
            ))
        })
    }

    fn ty(&self, id: u32) -> Result<Type<'_>, BtfError> {
        let pos = match self.type_offs.get(id as usize) {
            Some(&pos) if id != 0 => pos,
            _ => return Err(BtfError::BadTypeId(id)),
        };
        // These reads were all validated by `parse`; still checked, no panics.
        let info = read_u32(&self.data, pos + 4, "btf_type")?;
        let size_or_type = read_u32(&self.data, pos + 8, "btf_type")?;
        let kind = (info >> 24) & 0x1f;
        let len =
            extra_len(kind, (info & 0xffff) as usize).ok_or(BtfError::UnknownKind { id, kind })?;
        let start = pos + TYPE_LEN;
        let extra = self
            .data
            .get(start..start + len)
            .ok_or(BtfError::OutOfBounds {
                what: "btf_type data",
                offset: start,
                need: len,
                len: self.data.len(),
            })?;
        Ok(Type {
            id,
            info,
            size_or_type,
            extra,
        })
    }

    /// Follow typedef/const/volatile/restrict/type-tag links to the real type.
    fn skip_modifiers(&self, mut id: u32) -> Result<Type<'_>, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind() {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(t),
            }
        }
        Err(BtfError::Malformed(format!(
            "modifier chain from type [{id}] deeper than {MAX_DEPTH}"
        )))
    }

    /// Search `st` (STRUCT or UNION) for `name`, descending into anonymous
    /// struct/union members. Returns (bit offset, bitfield size).
    fn find_member(
        &self,
        st: Type<'_>,
        name: &[u8],
        depth: usize,
        budget: &mut usize,
    ) -> Result<Option<(u64, u32)>, BtfError> {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            BtfError::Malformed(format!(
                "more than {MAX_VISITS} anonymous members visited under type [{}]",
                st.id
            ))
        })?;
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed(format!(
                "anonymous member nesting deeper than {MAX_DEPTH} under type [{}]",
                st.id
            )));
        }
        for i in 0..st.vlen() {
            let base = i * 12;
            let m_name = read_u32(st.extra, base, "btf_member")?;
            let m_type = read_u32(st.extra, base + 4, "btf_member")?;
            let m_off = read_u32(st.extra, base + 8, "btf_member")?;
            // With kind_flag, the offset packs the bitfield size in the top byte.
            let (bit_off, bitfield_size) = if st.kind_flag() {
                (u64::from(m_off & 0x00ff_ffff), m_off >> 24)
            } else {
                (u64::from(m_off), 0)
            };
            if m_name != 0 {
                if self.str_at(m_name)? == name {
                    return Ok(Some((bit_off, bitfield_size)));
                }
                continue;
            }
            let inner = self.skip_modifiers(m_type)?;
            if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                if let Some((off, size)) = self.find_member(inner, name, depth + 1, budget)? {
                    return Ok(Some((bit_off + off, size)));
                }
            }
        }
        Ok(None)
    }

    fn str_at(&self, off: u32) -> Result<&[u8], BtfError> {
        cstr_at(&self.data, &self.strs, off)
    }
}

/// FNV-1a: a fast hash for the name index (names come from the kernel, not from
/// an adversary who could pick collisions; a collision only costs a comparison).
fn name_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// NUL-terminated string at `off` within the string section.
fn cstr_at<'a>(
    data: &'a [u8],
    strs: &std::ops::Range<usize>,
    off: u32,
) -> Result<&'a [u8], BtfError> {
    let oob = || BtfError::OutOfBounds {
        what: "string",
        offset: strs.start.saturating_add(off as usize),
        need: 1,
        len: strs.end,
    };
    let start = strs.start.checked_add(off as usize).ok_or_else(oob)?;
    let tail = data.get(start..strs.end).ok_or_else(oob)?;
    let len = tail.iter().position(|&b| b == 0).ok_or_else(oob)?;
    Ok(&tail[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::process::Command;

    fn vmlinux() -> Option<Btf> {
        if !std::path::Path::new(VMLINUX_PATH).exists() {
            eprintln!("skipped: no vmlinux BTF");
            return None;
        }
        Some(Btf::from_sys_fs().expect("parse vmlinux BTF"))
    }

    #[test]
    fn vmlinux_offsets() {
        let Some(btf) = vmlinux() else { return };
        let off = |s: &str, m: &str| {
            btf.member_offset(s, m)
                .unwrap_or_else(|e| panic!("{s}.{m}: {e}"))
        };
        let pid = off("task_struct", "pid");
        let tgid = off("task_struct", "tgid");
        let mm = off("task_struct", "mm");
        let exit_code = off("task_struct", "exit_code");
        let arg_start = off("mm_struct", "arg_start");
        let arg_end = off("mm_struct", "arg_end");
        let filename = off("linux_binprm", "filename");
        eprintln!(
            "task_struct: pid={pid} tgid={tgid} mm={mm} exit_code={exit_code}; \
             mm_struct: arg_start={arg_start} arg_end={arg_end}; linux_binprm.filename={filename}"
        );
        assert_eq!(tgid, pid + 4);
        assert_eq!(arg_end, arg_start + 8);
        assert!(matches!(
            btf.member_offset("task_struct", "no_such_member"),
            Err(BtfError::MemberNotFound { .. })
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct_xyz", "pid"),
            Err(BtfError::StructNotFound(_))
        ));
        // task_struct.in_execve is a 1-bit bitfield.
        assert!(matches!(
            btf.member_offset("task_struct", "in_execve"),
            Err(BtfError::NotByteAligned { .. })
        ));

        // Independent cross-check against bpftool's own decoding.
        let Some(raw) = bpftool_raw() else {
            eprintln!("bpftool cross-check skipped: bpftool not available");
            return;
        };
        let want = [
            ("task_struct", "pid", pid),
            ("task_struct", "tgid", tgid),
            ("task_struct", "mm", mm),
            ("task_struct", "exit_code", exit_code),
            ("mm_struct", "arg_start", arg_start),
            ("mm_struct", "arg_end", arg_end),
            ("linux_binprm", "filename", filename),
        ];
        for (s, m, ours) in want {
            let theirs = raw
                .member_bits(s, m)
                .unwrap_or_else(|| panic!("bpftool: no {s}.{m}"));
            assert_eq!(u64::from(ours) * 8, theirs, "{s}.{m}");
        }
    }

    #[test]
    fn vmlinux_tracepoints() {
        let Some(btf) = vmlinux() else { return };
        assert_eq!(btf.tracepoint_arg_count("sched_process_fork").unwrap(), 2);
        assert_eq!(btf.tracepoint_arg_count("sched_process_exit").unwrap(), 2);
        assert!(btf.has_function("taskstats_exit"));
        assert!(!btf.has_function("no_such_function_in_any_kernel"));
        assert_eq!(btf.tracepoint_arg_count("sched_process_exec").unwrap(), 3);
        assert!(matches!(
            btf.tracepoint_arg_count("no_such_tracepoint"),
            Err(BtfError::TracepointNotFound(_))
        ));
    }

    /// (name, type id, bits_offset) of one member line.
    type RawMember = (String, u32, u64);

    /// Struct/union layouts as printed by `bpftool btf dump ... format raw`.
    struct BpftoolRaw {
        /// id -> (kind, name, members)
        types: HashMap<u32, (String, String, Vec<RawMember>)>,
    }

    impl BpftoolRaw {
        fn member_bits(&self, st: &str, member: &str) -> Option<u64> {
            let (&id, _) = self
                .types
                .iter()
                .filter(|(_, (k, n, ms))| k == "STRUCT" && n == st && !ms.is_empty())
                .min_by_key(|(id, _)| **id)?;
            self.search(id, member, 0)
        }

        fn search(&self, id: u32, member: &str, depth: usize) -> Option<u64> {
            let (_, _, members) = self.types.get(&id)?;
            if depth > 16 {
                return None;
            }
            for (name, ty, bits) in members {
                if name == member {
                    return Some(*bits);
                }
                if name == "(anon)" {
                    if let Some(b) = self.search(*ty, member, depth + 1) {
                        return Some(bits + b);
                    }
                }
            }
            None
        }
    }

    fn bpftool_raw() -> Option<BpftoolRaw> {
        let out = ["/usr/sbin/bpftool", "bpftool"].iter().find_map(|tool| {
            Command::new(tool)
                .args(["btf", "dump", "file", VMLINUX_PATH, "format", "raw"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut types = HashMap::new();
        let mut current: Option<u32> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                current = None;
                // "[264] STRUCT 'mm_struct' size=1472 vlen=2"
                let (id, rest) = rest.split_once("] ")?;
                let (kind, rest) = rest.split_once(' ')?;
                if kind != "STRUCT" && kind != "UNION" {
                    continue;
                }
                let name = rest.strip_prefix('\'')?.split_once('\'')?.0;
                let id: u32 = id.parse().ok()?;
                types.insert(id, (kind.to_owned(), name.to_owned(), Vec::new()));
                current = Some(id);
            } else if let (Some(id), Some(rest)) = (current, line.strip_prefix("\t'")) {
                // "\t'arg_start' type_id=1 bits_offset=3840" (bitfields add
                // " bitfield_size=N", which we never look up here)
                let (name, rest) = rest.split_once('\'')?;
                let mut ty = None;
                let mut bits = None;
                for kv in rest.split_whitespace() {
                    if let Some(v) = kv.strip_prefix("type_id=") {
                        ty = v.parse().ok();
                    } else if let Some(v) = kv.strip_prefix("bits_offset=") {
                        bits = v.parse().ok();
                    }
                }
                if let (Some(ty), Some(bits), Some(entry)) = (ty, bits, types.get_mut(&id)) {
                    entry.2.push((name.to_owned(), ty, bits));
                }
            }
        }
        Some(BpftoolRaw { types })
    }

    // ---- synthetic BTF blobs -------------------------------------------------

    /// Tiny builder for hand-made BTF: types are raw u32 words, strings are
    /// appended with `s()`.
    struct Builder {
        types: Vec<u8>,
        strs: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strs: vec![0],
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            let off = self.strs.len() as u32;
            self.strs.extend_from_slice(name.as_bytes());
            self.strs.push(0);
            off
        }
        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_ne_bytes());
            }
        }
        fn build(&self) -> Vec<u8> {
            let mut d = Vec::new();
            d.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            d.extend_from_slice(&[BTF_VERSION, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strs.len() as u32,
            ] {
                d.extend_from_slice(&w.to_ne_bytes());
            }
            d.extend_from_slice(&self.types);
            d.extend_from_slice(&self.strs);
            d
        }
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (kind << 24) | vlen | (u32::from(kind_flag) << 31)
    }

    /// [1] int; [2] struct outer { int a; union { int x; struct { int y; int bf:3; }; }; }
    /// [3] anon union; [4] anon struct (kind_flag); [5] typedef btf_trace_foo -> [6] ptr -> [7] proto(void*, int)
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.s("int");
        let outer = b.s("outer");
        let (a, x, y, bf) = (b.s("a"), b.s("x"), b.s("y"), b.s("bf"));
        let tp = b.s("btf_trace_foo");
        b.words(&[int, info(KIND_INT, 0, false), 4, 32]); // [1]
        b.words(&[outer, info(KIND_STRUCT, 2, false), 16]); // [2]
        b.words(&[a, 1, 0, 0, 3, 64]);
        b.words(&[0, info(KIND_UNION, 2, false), 8]); // [3]
        b.words(&[x, 1, 0, 0, 4, 0]);
        b.words(&[0, info(KIND_STRUCT, 2, true), 8]); // [4]
        b.words(&[y, 1, 32, bf, 1, (3 << 24) | 40]);
        b.words(&[tp, info(KIND_TYPEDEF, 0, false), 6]); // [5]
        b.words(&[0, info(KIND_PTR, 0, false), 7]); // [6]
        b.words(&[0, info(KIND_FUNC_PROTO, 2, false), 0]); // [7]
        b.words(&[0, 0, 0, 1]);
        b.build()
    }

    #[test]
    fn synthetic_blob() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "bf"),
            Err(BtfError::NotByteAligned {
                bit_offset: 104,
                bitfield_size: 3,
                ..
            })
        ));
        assert!(matches!(
            btf.member_offset("int", "a"),
            Err(BtfError::StructNotFound(_))
        ));
        assert_eq!(btf.tracepoint_arg_count("foo").unwrap(), 1);
    }

    #[test]
    fn malformed_inputs() {
        assert!(matches!(
            Btf::parse(Vec::new()),
            Err(BtfError::OutOfBounds { .. })
        ));
        let mut bad_magic = sample();
        bad_magic[0] ^= 0xff;
        assert!(matches!(Btf::parse(bad_magic), Err(BtfError::BadMagic(_))));
        let mut bad_version = sample();
        bad_version[2] = 2;
        assert!(matches!(
            Btf::parse(bad_version),
            Err(BtfError::UnsupportedVersion(2))
        ));
        // Every truncation must be rejected (the header's section lengths no
        // longer fit) without panicking.
        let full = sample();
        for cut in 0..full.len() {
            assert!(Btf::parse(full[..cut].to_vec()).is_err(), "cut {cut}");
        }
        // Header consistent with the data, but the type section ends inside a
        // record: patch type_len and str_off down by 4 and drop 4 bytes.
        let mut short = full.clone();
        let type_len = u32::from_ne_bytes(short[12..16].try_into().unwrap()) - 4;
        short[12..16].copy_from_slice(&type_len.to_ne_bytes());
        short[16..20].copy_from_slice(&type_len.to_ne_bytes());
        short.drain(HEADER_LEN + type_len as usize..HEADER_LEN + type_len as usize + 4);
        assert!(matches!(
            Btf::parse(short),
            Err(BtfError::OutOfBounds { .. })
        ));
        // Unknown kind.
        let mut b = Builder::new();
        b.words(&[0, info(31, 0, false), 0]);
        assert!(matches!(
            Btf::parse(b.build()),
            Err(BtfError::UnknownKind { id: 1, kind: 31 })
        ));
        // Name offset past the string section / unterminated string.
        let mut b = Builder::new();
        b.words(&[1000, info(KIND_INT, 0, false), 4, 32]);
        assert!(matches!(
            Btf::parse(b.build()),
            Err(BtfError::OutOfBounds { what: "string", .. })
        ));
        // Member referencing a nonexistent type, and a self-referential
        // anonymous member: lookups fail cleanly.
        let mut b = Builder::new();
        let s = b.s("s");
        b.words(&[s, info(KIND_STRUCT, 2, false), 8]); // [1]
        b.words(&[0, 99, 0, 0, 1, 0]);
        let mut btf_bytes = b.build();
        let btf = Btf::parse(btf_bytes.clone()).unwrap();
        assert!(matches!(
            btf.member_offset("s", "zz"),
            Err(BtfError::BadTypeId(99))
        ));
        // Same struct, but the first anonymous member now points at itself.
        let first_member_type = HEADER_LEN + 12 + 4;
        btf_bytes[first_member_type..first_member_type + 4].copy_from_slice(&1u32.to_ne_bytes());
        let btf = Btf::parse(btf_bytes).unwrap();
        assert!(matches!(
            btf.member_offset("s", "zz"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn parse_speed() {
        let Ok(data) = std::fs::read(VMLINUX_PATH) else {
            eprintln!("skipped: no vmlinux BTF");
            return;
        };
        let t = std::time::Instant::now();
        let btf = Btf::parse(data).unwrap();
        eprintln!(
            "parsed {} types in {:?} (debug builds are much slower than release)",
            btf.type_offs.len() - 1,
            t.elapsed()
        );
    }
}
