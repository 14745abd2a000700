//! Short, readable command labels from argv: program basename, long paths cut to
//! their last component, long arguments elided in the middle, shell-style quoting
//! where an argument has spaces, and a total width limit.

/// Longest label, in characters.
pub const LABEL_MAX_CHARS: usize = 60;
/// Longest single argument before it is shortened.
const ARG_MAX_CHARS: usize = 28;

/// Basename of argv[0], else of exe: how processes are grouped and named.
pub fn program(argv: &[String], exe: Option<&str>) -> String {
    argv.first()
        .map(String::as_str)
        .filter(|a| !a.is_empty())
        .or(exe)
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "?".to_string())
}

/// The whole command line, shell-quoted, for tables and tooltips.
pub fn full(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// A label like `sort -n`, `python3 …/scripts/align.py --in x.fq`, `sh -c 'kill -TERM $$'`.
pub fn label(argv: &[String], exe: Option<&str>) -> String {
    let mut parts = vec![program(argv, exe)];
    parts.extend(argv.iter().skip(1).map(|a| quote(&shorten_arg(a))));
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        let sep = usize::from(i > 0);
        if out.chars().count() + sep + p.chars().count() > LABEL_MAX_CHARS {
            out.push_str(if i > 0 { " …" } else { "…" });
            break;
        }
        if i > 0 {
            out.push(' ');
        }
        out.push_str(p);
    }
    out
}

fn shorten_arg(a: &str) -> String {
    let n = a.chars().count();
    if n <= ARG_MAX_CHARS {
        return a.to_string();
    }
    // A path: keep its last component, which says the most.
    if !a.contains(char::is_whitespace) {
        if let Some((_, last)) = a.rsplit_once('/') {
            if !last.is_empty() && last.chars().count() < ARG_MAX_CHARS {
                return format!("…/{last}");
            }
        }
    }
    let head: String = a.chars().take(ARG_MAX_CHARS / 2).collect();
    let tail: String = a.chars().skip(n - (ARG_MAX_CHARS / 2 - 1)).collect();
    format!("{head}…{tail}")
}

/// POSIX shell quoting, only where needed.
fn quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_alphanumeric() || "-_./=:,+@%^…".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels() {
        assert_eq!(label(&v(&["/usr/bin/sort", "-n"]), None), "sort -n");
        assert_eq!(
            label(&v(&["sh", "-c", "kill -TERM $$"]), None),
            "sh -c 'kill -TERM $$'"
        );
        assert_eq!(
            label(
                &v(&["python3", "/very/long/path/to/the/scripts/align.py", "x"]),
                None
            ),
            "python3 …/align.py x"
        );
        assert_eq!(label(&[], Some("/bin/true")), "true");
        assert_eq!(label(&[], None), "?");
        let long = v(&[
            "awk",
            "{ print ($1 * 7919) % 1009 } and then some more text",
        ]);
        assert_eq!(label(&long, None), "awk '{ print ($1 * …ome more text'");
        let many: Vec<String> = (0..40).map(|i| format!("arg{i}")).collect();
        let l = label(&many, None);
        assert!(l.chars().count() <= LABEL_MAX_CHARS + 2, "{l}");
        assert!(l.ends_with(" …"), "{l}");
        assert_eq!(full(&v(&["sh", "-c", "it's"])), r"sh -c 'it'\''s'");
    }
}
