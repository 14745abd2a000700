//! Nextflow: a task runs as `bash .command.run` in its work directory, whose
//! `.command.run` names the task in a comment (`# NEXTFLOW TASK: NAME (TAG)`).

use super::EngineMark;

const WRAPPER: &str = ".command.run";
const TASK_COMMENT: &str = "# NEXTFLOW TASK: ";

/// The engine mark an argv carries, if it runs a task wrapper.
pub(super) fn mark_of(argv: &[String], cwd: impl FnOnce() -> Option<String>) -> Option<EngineMark> {
    let shell = argv.first()?;
    if !matches!(shell.rsplit('/').next(), Some("bash" | "sh")) {
        return None;
    }
    let wrapper = argv[1..]
        .iter()
        .find(|a| *a == WRAPPER || a.ends_with("/.command.run"))?;
    let work_dir = match wrapper.rsplit_once('/') {
        Some((dir, _)) if dir.starts_with('/') => dir.to_string(),
        Some((dir, _)) => format!("{}/{dir}", cwd()?),
        None => cwd()?,
    };
    Some(EngineMark::Nextflow { work_dir })
}

/// Name and tag from the wrapper's text: `sayHello (1)` is name `sayHello`, tag `1`.
pub(super) fn name_and_tag(wrapper_text: &str) -> Option<(String, Option<String>)> {
    let line = wrapper_text
        .lines()
        .take(20)
        .find_map(|l| l.strip_prefix(TASK_COMMENT))?
        .trim();
    Some(
        match line.strip_suffix(')').and_then(|l| l.rsplit_once(" (")) {
            Some((name, tag)) => (name.to_string(), Some(tag.to_string())),
            None => (line.to_string(), None),
        },
    )
}

/// The task's hash as Nextflow's trace shows it: `ab/cdef12`, from `work/ab/cdef12…`.
pub(super) fn short_hash(work_dir: &str) -> Option<String> {
    let mut parts = work_dir.trim_end_matches('/').rsplit('/');
    let long = parts.next()?;
    let prefix = parts.next()?;
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix.len() == 2 && is_hex(prefix) && is_hex(long))
        .then(|| format!("{prefix}/{}", &long[..long.len().min(6)]))
}

/// The wrapper's path in a work directory.
pub(super) fn wrapper_path(work_dir: &str) -> std::path::PathBuf {
    std::path::Path::new(work_dir).join(WRAPPER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_wrapper_marks_its_work_directory() {
        let cwd = || Some("/w/work/3f/a1b2c3d4".to_string());
        assert_eq!(
            mark_of(&argv(&["/bin/bash", "-ue", ".command.run"]), cwd),
            Some(EngineMark::Nextflow {
                work_dir: "/w/work/3f/a1b2c3d4".into()
            })
        );
        assert_eq!(
            mark_of(&argv(&["bash", "/x/work/aa/bb/.command.run"]), || None),
            Some(EngineMark::Nextflow {
                work_dir: "/x/work/aa/bb".into()
            })
        );
        assert_eq!(mark_of(&argv(&["cat", ".command.run"]), cwd), None);
        assert_eq!(mark_of(&argv(&["bash", ".command.sh"]), cwd), None);
    }

    #[test]
    fn name_tag_and_hash() {
        let text = "#!/bin/bash\n# NEXTFLOW TASK: ALIGN:bwa (sample 1)\nset -e\n";
        assert_eq!(
            name_and_tag(text),
            Some(("ALIGN:bwa".into(), Some("sample 1".into())))
        );
        assert_eq!(
            name_and_tag("# NEXTFLOW TASK: index\n"),
            Some(("index".into(), None))
        );
        assert_eq!(name_and_tag("#!/bin/bash\n"), None);
        assert_eq!(
            short_hash("/w/work/3f/a1b2c3d4e5"),
            Some("3f/a1b2c3".into())
        );
        assert_eq!(short_hash("/w/tmp/x"), None);
    }
}
