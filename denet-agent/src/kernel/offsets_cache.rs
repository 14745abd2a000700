//! The kernel struct offsets and hook plan of this kernel build, kept between runs.
//!
//! Reading and indexing the kernel's 5.5 MB BTF is the largest part of a run's
//! start-up, and its result depends only on the kernel build and the agent. So a run
//! as root stores the offsets in `/run/denet-agent/` (tmpfs: gone at reboot), keyed by
//! the kernel's GNU build id and the agent's version, and later runs read them back.
//!
//! The offsets steer what the programs read from kernel memory, so only a file root
//! wrote is trusted: owned by root, not writable by group or others, in a directory
//! with the same properties. Runs that are not root (file capabilities) read such a
//! file but never write one. Anything unexpected means "no cache": the BTF is read.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use denet_common::{read_event, KernelOffsets};

use super::hooks::Plan;

/// The file: the offsets' bytes, then the plan's program bits (u64, native order).
const SIZE: usize = size_of::<KernelOffsets>() + 8;

const DIR: &str = "/run/denet-agent";
const NOTES: &str = "/sys/kernel/notes";
/// Bumped when the file's layout changes. The key also holds a hash of the sources
/// that compute the offsets (build.rs), so another build never reads this one's.
const FORMAT: u32 = 2;

/// The cache file of the running kernel build, or None when the build id is unknown.
pub(crate) fn path() -> Option<PathBuf> {
    let id = build_id(&fs::read(NOTES).ok()?)?;
    Some(path_in(Path::new(DIR), &id))
}

fn path_in(dir: &Path, build_id: &str) -> PathBuf {
    dir.join(format!(
        "offsets-{build_id}-v{}-f{FORMAT}-{}.bin",
        env!("CARGO_PKG_VERSION"),
        env!("DENET_OFFSETS_SOURCE_HASH")
    ))
}

/// The GNU build id (hex) from the kernel's ELF notes.
fn build_id(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz, kind) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(pad4(namesz))?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
            if desc.is_empty() {
                return None;
            }
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = desc_at + pad4(descsz);
    }
    None
}

/// Owned by root and writable by nobody else.
fn trusted(meta: &fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o022 == 0
}

/// The offsets and plan stored at `path`, if root stored them there. The file is opened
/// without following links and checked through the open descriptor.
pub(crate) fn read(path: &Path) -> Option<(KernelOffsets, Plan)> {
    use std::io::Read;
    let dir = path.parent()?;
    if !trusted(&fs::symlink_metadata(dir).ok()?) {
        return None;
    }
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || !trusted(&meta) || meta.len() != SIZE as u64 {
        return None;
    }
    let mut bytes = vec![0u8; SIZE];
    f.read_exact(&mut bytes).ok()?;
    let offsets = read_event(&bytes)?;
    let chosen = u64::from_ne_bytes(bytes[size_of::<KernelOffsets>()..].try_into().ok()?);
    Some((offsets, Plan { chosen }))
}

/// Stores the offsets for later runs; only as root, best effort (a failure only
/// means the next run reads the BTF again).
pub(crate) fn write(path: &Path, offsets: &KernelOffsets, plan: &Plan) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let _ = try_write(path, offsets, plan);
}

fn try_write(path: &Path, offsets: &KernelOffsets, plan: &Plan) -> std::io::Result<()> {
    let dir = path.parent().ok_or(std::io::ErrorKind::InvalidInput)?;
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    // Readable by every user whatever root's umask: non-root runs read it too.
    if meta.uid() == 0 && meta.is_dir() && meta.mode() & 0o755 != 0o755 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    if !trusted(&fs::symlink_metadata(dir)?) {
        return Err(std::io::ErrorKind::PermissionDenied.into());
    }
    // Written whole under a temporary name, then renamed: readers never see half.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".offsets-{}-{nanos}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o644))?;
    // SAFETY: KernelOffsets is a #[repr(C)] struct of u32s: its bytes are plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (offsets as *const KernelOffsets).cast::<u8>(),
            size_of::<KernelOffsets>(),
        )
    };
    let written = f
        .write_all(bytes)
        .and_then(|()| f.write_all(&plan.chosen.to_ne_bytes()))
        .and_then(|()| f.sync_all());
    drop(f);
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_ne_bytes());
        v.extend((desc.len() as u32).to_ne_bytes());
        v.extend(kind.to_ne_bytes());
        v.extend(name);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend(desc);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn build_id_from_notes() {
        let mut notes = note(6, b"Linux\0", &[1, 2, 3, 4]);
        notes.extend(note(3, b"GNU\0", &[0xab, 0x01, 0xff]));
        assert_eq!(build_id(&notes).as_deref(), Some("ab01ff"));
        assert_eq!(build_id(&note(6, b"Linux\0", &[1])), None);
        // Truncated or garbage input: no id, no panic.
        assert_eq!(build_id(&notes[..notes.len() - 3]), None);
        assert_eq!(build_id(&[0xff; 40]), None);
        assert_eq!(build_id(&[]), None);
    }

    #[test]
    fn round_trip_and_only_trusted_files_are_read() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "the offsets cache test needs root, and CI runs as root"
            );
            eprintln!("skipped: the cache is written by root only (run as root)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("denet-offsets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = path_in(&dir.join("cache"), "00ff");
        let offsets = KernelOffsets {
            task_pid: 1234,
            request_bio: 77,
            ..Default::default()
        };
        let plan = Plan { chosen: 0b1011 };
        write(&path, &offsets, &plan);
        assert_eq!(read(&path), Some((offsets, plan)));
        // Writable by others: not trusted.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read(&path), None);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        // Owned by someone else: not trusted.
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert_eq!(read(&path), None);
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        // A directory others may write to: not trusted.
        fs::set_permissions(path.parent().unwrap(), fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(read(&path), None);
        fs::set_permissions(path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
        // Wrong size: ignored.
        fs::write(&path, b"short").unwrap();
        assert_eq!(read(&path), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
