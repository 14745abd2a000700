//! `denet-agent slurm record`: the node daemon's recorder of one Slurm batch task.
//!
//! Started by the daemon (root, outside the job) with a one-time token in its
//! environment. It takes the task over from the daemon, follows it to its end and
//! writes its trace, with the job user's file-system identity: the trace goes only
//! where the user may write, and the engines' files it reads (`.command.run`) are
//! read with the user's rights. Then, as root again, it writes the run's history
//! row and task rows to the service's database.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{
    engine::{launch::LaunchSpec, run::run, Adoption, EbpfMode, RunConfig},
    history::History,
    run_history,
    service::act_as::set_thread_fs_identity,
    task::Marks,
    trace::SlurmJob,
};

pub struct RecordArgs {
    /// The node daemon's tracer socket.
    pub socket: PathBuf,
    /// The task's process.
    pub pid: u32,
    /// The job's user.
    pub uid: u32,
    /// The trace file (written as the user).
    pub out: PathBuf,
}

/// Follows the task, writes its trace and its history rows. Returns the exit status
/// of the recorder (not of the job).
pub fn record(args: RecordArgs) -> Result<i32> {
    let token = std::env::var("DENET_AGENT_ADOPT_TOKEN")
        .context("DENET_AGENT_ADOPT_TOKEN: the recorder is started by the node daemon")?;
    let job: SlurmJob = serde_json::from_str(
        &std::env::var("DENET_AGENT_SLURM_JOB").context("DENET_AGENT_SLURM_JOB")?,
    )
    .context("DENET_AGENT_SLURM_JOB is not a Slurm job")?;
    let db = std::env::var("DENET_AGENT_DB").ok();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(args.uid))
        .context("the user database")?
        .with_context(|| format!("uid {} has no entry in the user database", args.uid))?;
    let groups: Vec<u32> = nix::unistd::getgrouplist(
        &std::ffi::CString::new(user.name.clone()).context("the user's name")?,
        user.gid,
    )
    .context("the user's groups")?
    .iter()
    .map(|g| g.as_raw())
    .collect();
    let own_groups: Vec<u32> = nix::unistd::getgroups()
        .context("the recorder's groups")?
        .iter()
        .map(|g| g.as_raw())
        .collect();
    let (own_uid, own_gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if own_uid != 0 {
        bail!("the recorder runs as root (the node daemon starts it)");
    }

    // From here on, this thread opens paths as the user.
    set_thread_fs_identity(args.uid, user.gid.as_raw(), &groups)
        .context("taking the user's file-system identity")?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} as {}", dir.display(), user.name))?;
    }
    let config = RunConfig {
        launch: LaunchSpec {
            argv: vec![
                "slurm-batch".into(),
                job.display_id(),
                job.job_name.clone().unwrap_or_default(),
            ],
            ..LaunchSpec::default()
        },
        out: args.out.clone(),
        interval_ms: 100,
        max_interval_ms: 1000,
        timeout: None,
        kill_grace: std::time::Duration::from_secs(10),
        ebpf: EbpfMode::Required,
        ringbuf_bytes: 0,
        files: false,
        syscalls: false,
        events: false,
        node_socket: Some(args.socket.clone()),
        limits: Default::default(),
        adopt: Some(Adoption {
            pid: args.pid,
            token,
            marks: Marks {
                slurm: Some(job.clone()),
                engine: Vec::new(),
            },
        }),
    };
    let outcome = run(config)?;
    drop(outcome);
    let out = args.out.clone();
    let report = crate::report::analyze(&out, Box::new(|_: &str| {}))
        .with_context(|| format!("reading the trace {}", out.display()))?;

    // The database is the service's: root's again.
    set_thread_fs_identity(own_uid, own_gid, &own_groups)
        .context("returning to the recorder's own identity")?;
    let Some(db) = db else {
        return Ok(0);
    };
    let cluster = job.cluster.clone().unwrap_or_else(|| "slurm".into());
    let id = format!("slurm-{cluster}-{}", job.display_id());
    let (row, tasks) = run_history::rows_of(
        &report,
        args.out.display().to_string(),
        run_history::RunIdentity {
            id,
            name: job.job_name.clone(),
            user: user.name.clone(),
            uid: args.uid,
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let history = History::open(crate::history::db_spec(&db)).await?;
        run_history::insert_rows(&history, &row, &tasks).await
    })
    .with_context(|| format!("recording Slurm job {}", job.display_id()))?;
    Ok(0)
}
