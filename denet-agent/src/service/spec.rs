//! What a client may ask for in `POST /jobs`, and the checks that turn a request body
//! into a job specification. Everything here is pure so it is tested without a server.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::cgroup::{check_cpus, parse_size, Limits, MAX_PIDS_LIMIT};

/// Bounds on a request, beyond the HTTP body limit.
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV_VARS: usize = 1024;
/// Longest timeout a job may ask for: 30 days.
pub const MAX_TIMEOUT_S: f64 = 30.0 * 86_400.0;

/// The body of `POST /jobs`. Unknown fields are refused so typos do not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub name: String,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Raise the `stuck` flag after this long without CPU progress or output.
    #[serde(default)]
    pub stuck_after_s: Option<f64>,
    /// Memory limit of the job's cgroup: bytes, or a size such as "4G".
    #[serde(default)]
    pub memory_limit: Option<Size>,
    /// CPU quota, in CPUs.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes and threads at once.
    #[serde(default)]
    pub max_pids: Option<u64>,
}

/// A size given as a byte count or as text with a unit ("512M", "4G").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// A validated job request, with the service defaults applied.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub cmd: Vec<String>,
    /// Set on top of the service's own environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub stuck_after: Duration,
    /// Limits of the job's cgroup.
    pub limits: Limits,
}

/// Defaults a request falls back on.
#[derive(Debug, Clone)]
pub struct SpecDefaults {
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub stuck_after: Duration,
    /// The most a job may ask for, and what a job that asks for nothing gets.
    pub caps: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError {
        field,
        problem: problem.into(),
    }
}

/// Job names end up in URLs, file names and database rows: keep them plain.
pub fn valid_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(bad(
            "name",
            format!("must be 1 to {MAX_NAME_BYTES} bytes long"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("name", "may only contain A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// POSIX portable environment names: a letter or `_`, then letters, digits, `_`.
fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn seconds(field: &'static str, v: Option<f64>, default: Duration) -> Result<Duration, SpecError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_S => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(bad(
            field,
            format!("must be a number of seconds in (0, {MAX_TIMEOUT_S}], got {s}"),
        )),
    }
}

/// The job's limits: what it asked for within the service's caps, else the caps.
fn limits(req: &JobRequest, caps: &Limits) -> Result<Limits, SpecError> {
    let memory = match &req.memory_limit {
        None => None,
        Some(Size::Bytes(b)) => {
            Some(parse_size(&b.to_string()).map_err(|e| bad("memory_limit", e))?)
        }
        Some(Size::Text(t)) => Some(parse_size(t).map_err(|e| bad("memory_limit", e))?),
    };
    if let Some(c) = req.cpus {
        check_cpus(c).map_err(|e| bad("cpus", e))?;
    }
    if let Some(n) = req.max_pids {
        if !(1..=MAX_PIDS_LIMIT).contains(&n) {
            return Err(bad(
                "max_pids",
                format!("in [1, {MAX_PIDS_LIMIT}], got {n}"),
            ));
        }
    }
    let within = |field: &'static str,
                  asked: Option<f64>,
                  cap: Option<f64>,
                  show: &dyn Fn(f64) -> String| {
        match (asked, cap) {
            (Some(a), Some(c)) if a > c => Err(bad(
                field,
                format!("{} is above this service's cap of {}", show(a), show(c)),
            )),
            (Some(a), _) => Ok(Some(a)),
            (None, c) => Ok(c),
        }
    };
    Ok(Limits {
        memory_bytes: within(
            "memory_limit",
            memory.map(|m| m as f64),
            caps.memory_bytes.map(|m| m as f64),
            &|v| format!("{} bytes", v as u64),
        )?
        .map(|v| v as u64),
        cpus: within("cpus", req.cpus, caps.cpus, &|v| format!("{v} CPUs"))?,
        max_pids: within(
            "max_pids",
            req.max_pids.map(|n| n as f64),
            caps.max_pids.map(|n| n as f64),
            &|v| format!("{}", v as u64),
        )?
        .map(|v| v as u64),
    })
}

impl JobRequest {
    pub fn validate(self, defaults: &SpecDefaults) -> Result<JobSpec, SpecError> {
        valid_name(&self.name)?;
        let limits = limits(&self, &defaults.caps)?;
        if self.cmd.is_empty() {
            return Err(bad("cmd", "must be a non-empty array of strings"));
        }
        if self.cmd.len() > MAX_ARGS {
            return Err(bad("cmd", format!("at most {MAX_ARGS} arguments")));
        }
        if self.cmd[0].is_empty() {
            return Err(bad("cmd", "the program name is empty"));
        }
        if self.cmd.iter().any(|a| a.contains('\0')) {
            return Err(bad("cmd", "arguments may not contain NUL bytes"));
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(bad("env", format!("at most {MAX_ENV_VARS} variables")));
        }
        for (k, v) in &self.env {
            if !valid_env_name(k) {
                return Err(bad(
                    "env",
                    format!("{k:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
            if v.contains('\0') {
                return Err(bad("env", format!("the value of {k} contains a NUL byte")));
            }
        }
        let cwd = match self.cwd {
            None => defaults.cwd.clone(),
            Some(c) => {
                let p = PathBuf::from(&c);
                if !p.is_absolute() {
                    return Err(bad("cwd", format!("must be an absolute path, got {c:?}")));
                }
                // Whether it exists is checked as the caller, by the service
                // (never here, with the service's rights).
                p
            }
        };
        Ok(JobSpec {
            limits,
            name: self.name,
            cmd: self.cmd,
            env: self.env.into_iter().collect(),
            cwd,
            timeout: seconds("timeout_s", self.timeout_s, defaults.timeout)?,
            stuck_after: seconds("stuck_after_s", self.stuck_after_s, defaults.stuck_after)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SpecDefaults {
        SpecDefaults {
            caps: Limits {
                memory_bytes: Some(8 << 30),
                cpus: Some(2.0),
                max_pids: None,
            },
            cwd: PathBuf::from("/"),
            timeout: Duration::from_secs(3600),
            stuck_after: Duration::from_secs(300),
        }
    }

    fn parse(body: &str) -> Result<JobSpec, String> {
        let req: JobRequest = serde_json::from_str(body).map_err(|e| e.to_string())?;
        req.validate(&defaults()).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_a_full_request_and_applies_defaults() {
        let spec = parse(r#"{"name":"bwa-1","cmd":["bwa","mem"],"env":{"OMP_NUM_THREADS":"2"},"cwd":"/tmp","timeout_s":1.5}"#).unwrap();
        assert_eq!(spec.cmd, ["bwa", "mem"]);
        assert_eq!(spec.env, [("OMP_NUM_THREADS".into(), "2".into())]);
        assert_eq!(spec.cwd, PathBuf::from("/tmp"));
        assert_eq!(spec.timeout, Duration::from_millis(1500));
        assert_eq!(spec.stuck_after, Duration::from_secs(300));
        let spec = parse(r#"{"name":"x","cmd":["true"]}"#).unwrap();
        assert_eq!(spec.cwd, PathBuf::from("/"));
        assert_eq!(spec.timeout, Duration::from_secs(3600));
    }

    #[test]
    fn limits_within_the_caps_else_the_caps() {
        let spec =
            parse(r#"{"name":"x","cmd":["true"],"memory_limit":"512M","cpus":1.5,"max_pids":64}"#)
                .unwrap();
        assert_eq!(
            spec.limits,
            Limits {
                memory_bytes: Some(512 << 20),
                cpus: Some(1.5),
                max_pids: Some(64)
            }
        );
        let spec = parse(r#"{"name":"x","cmd":["true"],"memory_limit":1073741824}"#).unwrap();
        assert_eq!(spec.limits.memory_bytes, Some(1 << 30));
        // Nothing asked: the caps.
        let spec = parse(r#"{"name":"x","cmd":["true"]}"#).unwrap();
        assert_eq!(
            (
                spec.limits.memory_bytes,
                spec.limits.cpus,
                spec.limits.max_pids
            ),
            (Some(8 << 30), Some(2.0), None)
        );
        for (body, want) in [
            (
                r#"{"name":"x","cmd":["true"],"memory_limit":"16G"}"#,
                "memory_limit: 17179869184 bytes is above this service's cap",
            ),
            (
                r#"{"name":"x","cmd":["true"],"cpus":3}"#,
                "cpus: 3 CPUs is above",
            ),
            (
                r#"{"name":"x","cmd":["true"],"cpus":0}"#,
                "cpus: a number of CPUs",
            ),
            (
                r#"{"name":"x","cmd":["true"],"max_pids":0}"#,
                "max_pids: in [1",
            ),
            (
                r#"{"name":"x","cmd":["true"],"memory_limit":"lots"}"#,
                "memory_limit: \"lots\": unknown unit",
            ),
            (
                r#"{"name":"x","cmd":["true"],"memory_limit":100}"#,
                "memory_limit: \"100\": at least 1 MiB",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn refuses_bad_requests_with_the_field_named() {
        let cases = [
            (r#"{"name":"x","cmd":"ls -l"}"#, "invalid type"),
            (r#"{"name":"x","cmd":[]}"#, "cmd: must be a non-empty"),
            (r#"{"name":"x","cmd":[1,2]}"#, "invalid type"),
            (
                r#"{"name":"x","cmd":[""]}"#,
                "cmd: the program name is empty",
            ),
            (
                r#"{"name":"x","cmd":["a\u0000b"]}"#,
                "cmd: arguments may not contain NUL",
            ),
            (r#"{"name":"","cmd":["true"]}"#, "name: must be 1 to"),
            (r#"{"name":"a/b","cmd":["true"]}"#, "name: may only contain"),
            (r#"{"cmd":["true"]}"#, "missing field `name`"),
            (
                r#"{"name":"x","cmd":["true"],"env":{"1BAD":"v"}}"#,
                "env: \"1BAD\" is not a valid",
            ),
            (
                r#"{"name":"x","cmd":["true"],"env":{"A=B":"v"}}"#,
                "env: \"A=B\" is not a valid",
            ),
            (
                r#"{"name":"x","cmd":["true"],"env":{"A":1}}"#,
                "invalid type",
            ),
            (
                r#"{"name":"x","cmd":["true"],"cwd":"rel"}"#,
                "cwd: must be an absolute",
            ),
            (
                r#"{"name":"x","cmd":["true"],"timeout_s":-1}"#,
                "timeout_s: must be",
            ),
            (
                r#"{"name":"x","cmd":["true"],"timeout_s":0}"#,
                "timeout_s: must be",
            ),
            (
                r#"{"name":"x","cmd":["true"],"timeout_s":"10"}"#,
                "invalid type",
            ),
            (
                r#"{"name":"x","cmd":["true"],"stuck_after_s":1e12}"#,
                "stuck_after_s: must be",
            ),
            (
                r#"{"name":"x","cmd":["true"],"shell":true}"#,
                "unknown field `shell`",
            ),
            (r#"[1]"#, "invalid type"),
        ];
        for (body, want) in cases {
            let err = parse(body).expect_err(body);
            assert!(
                err.contains(want),
                "{body}: {err:?} does not contain {want:?}"
            );
        }
    }
}
