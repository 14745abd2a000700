//! `denet-agent slurm task-prolog`: asks the node daemon to trace this batch task.
//!
//! Slurm runs it as the job's user, a child of the task that waits for it before it
//! execs the job's script. It never fails the job: whatever goes wrong (no daemon,
//! a refusal), it says so on stderr (Slurm discards a TaskProlog's stderr; the
//! daemon logs its refusals too) and exits 0, and the job runs untraced. What it
//! prints on stdout Slurm applies to the job: `export DENET_AGENT_TRACE_FILE=PATH`
//! tells the job where its trace goes. A job submitted with `DENET_AGENT_SLURM=off`
//! is left alone (it traces itself with `denet-agent run`).

use std::{io::BufReader, os::unix::net::UnixStream, path::Path, time::Duration};

use crate::node::protocol::{
    self, Reply, Request, SlurmTaskRequest, MAX_REQUEST_BYTES, PROTOCOL_VERSION,
};

/// The daemon answers once the recorder tracks the task (it waits 20 s at most).
const ANSWER_WITHIN: Duration = Duration::from_secs(25);

/// Runs the prolog; the exit status is always 0 (see the module).
pub fn run(socket: &Path) -> i32 {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SLURM_") || k == "DENET_AGENT_TRACE")
        .collect();
    if !env.iter().any(|(k, _)| k == "SLURM_JOB_ID") {
        eprintln!("denet-agent slurm task-prolog: not in a Slurm job (no SLURM_JOB_ID)");
        return 0;
    }
    if std::env::var("DENET_AGENT_SLURM").is_ok_and(|v| v == "off") {
        // The job traces itself (`denet-agent run` in its script).
        return 0;
    }
    match ask(socket, env) {
        Ok(trace) => println!("export DENET_AGENT_TRACE_FILE={trace}"),
        Err(why) => eprintln!("denet-agent slurm task-prolog: not traced: {why}"),
    }
    0
}

fn ask(socket: &Path, env: Vec<(String, String)>) -> Result<String, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("no node daemon at {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    protocol::send(
        &mut writer,
        &Request::SlurmTask(Box::new(SlurmTaskRequest {
            version: PROTOCOL_VERSION,
            env,
        })),
    )
    .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    match protocol::receive::<Reply>(&mut reader, MAX_REQUEST_BYTES) {
        Ok(Reply::Adopted { trace, .. }) => Ok(trace),
        Ok(Reply::Refused { reason }) => Err(reason),
        Ok(_) => Err("an unexpected answer".into()),
        Err(e) => Err(e.to_string()),
    }
}
