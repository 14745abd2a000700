//! The HTTP and WebSocket API of `denet-agent serve`. JSON in and out; every error
//! is a JSON object `{"error": "..."}` with a 4xx or 5xx status.
//!
//! One job, one file: every route of the API and its checks, in the order of
//! docs/serve.md's table; the jobs themselves are run by `supervisor`.

use std::{collections::HashMap, future::IntoFuture, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    body::{Body, Bytes},
    extract::{
        rejection::BytesRejection,
        ws::rejection::WebSocketUpgradeRejection,
        ws::{Message, WebSocket, WebSocketUpgrade},
        ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State,
    },
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};

use super::{
    act_as,
    identity::{Identity, Peer},
    job::{self, Job, JobView, LogStream, StreamMsg},
    spec::JobRequest,
    Service, SubmitError,
};
use crate::{engine::Control, history::HistoryQuery};

/// Most rows one history query returns.
pub const MAX_HISTORY_LIMIT: u32 = 10_000;
/// Bytes of each stream in the JSON form of `GET /jobs/{id}/logs` (the tail).
const LOG_JSON_TAIL: u64 = 1024 * 1024;

pub struct ApiError {
    status: StatusCode,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            extra: None,
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(svc: Arc<Service>) -> Router {
    let max_body = svc.config.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{id}", get(show_job))
        .route("/jobs/{id}/stop", post(stop_job))
        .route("/jobs/{id}/pause", post(pause_job))
        .route("/jobs/{id}/resume", post(resume_job))
        .route("/jobs/{id}/trace", get(job_trace))
        .route("/jobs/{id}/logs", get(job_logs))
        .route("/jobs/{id}/stream", get(job_stream))
        .route("/history", get(history))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::map_response(errors_as_json))
        .layer(middleware::from_fn_with_state(svc.clone(), authenticate))
        .with_state(svc)
}

/// Errors raised by the framework itself (a malformed query string, a plain GET on a
/// stream route) come as text: give them the same JSON shape as ours.
async fn errors_as_json(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string()
    } else {
        text
    };
    let mut out = ApiError::new(parts.status, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Who is calling: the kernel's record of a Unix socket peer, or the user a TCP
/// caller's bearer token is mapped to. Handlers receive it as an `Identity`.
async fn authenticate(
    State(svc): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let identity = match peer.unix {
        Some((uid, _)) => match Identity::of_uid(uid) {
            Ok(identity) => identity,
            Err(e) => return ApiError::forbidden(e.to_string()).into_response(),
        },
        None => {
            let found = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|given| svc.config.tokens.as_ref()?.identify(given).cloned());
            match found {
                Some(identity) => identity,
                None => {
                    let mut resp =
                        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                            .into_response();
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                    return resp;
                }
            }
        }
    };
    // A service that is not root cannot act as anyone but itself.
    let own = nix::unistd::geteuid().as_raw();
    if own != 0 && identity.uid != own {
        return ApiError::forbidden(format!(
            "this service runs as uid {own} and acts for that user only"
        ))
        .into_response();
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

async fn health(State(svc): State<Arc<Service>>) -> Json<Value> {
    Json(json!({
        "ok": true,
        "agent_version": env!("CARGO_PKG_VERSION"),
        "active_jobs": svc.active_count(),
        "db_backend": svc.history.backend(),
        "shutting_down": svc.is_shutting_down(),
        "node_tracer": svc.node.as_ref().map(|n| json!({
            "socket": n.socket(),
            "active_runs": n.active_runs(),
        })),
    }))
}

async fn create_job(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        if !ct.to_str().is_ok_and(|c| c.starts_with("application/json")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
    }
    let req: JobRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid job request: {e}")))?;
    let mut defaults = svc.config.defaults.clone();
    if me.uid != nix::unistd::geteuid().as_raw() {
        // Another user starts in their home, not in the service's directory.
        defaults.cwd = me.home.clone();
    }
    let spec = req
        .validate(&defaults)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Checked as the caller: the service never looks at a caller's path as root.
    let who = me.clone();
    let cwd = spec.cwd.clone();
    tokio::task::spawn_blocking(move || act_as::check_cwd(&who, cwd))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::bad_request(format!("cwd: {e}")))?;
    match svc.submit(spec, me) {
        Ok(job) => {
            let st = job.state().status;
            Ok((
                StatusCode::CREATED,
                Json(json!({ "id": job.id, "name": job.spec.name, "status": st.as_str() })),
            ))
        }
        Err(e @ SubmitError::Duplicate { .. }) => {
            let mut err = ApiError::new(StatusCode::CONFLICT, e.to_string());
            if let SubmitError::Duplicate { id, .. } = &e {
                err.extra = Some(json!({ "id": id }));
            }
            Err(err)
        }
        Err(e @ SubmitError::TooMany(_)) => {
            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
        }
        Err(e @ SubmitError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// Ended jobs from the history that `GET /jobs` adds when fewer are in memory (after
/// a restart, memory starts empty).
const LIST_RECENT: u32 = 100;

/// Queued, running and recent jobs, oldest first: those in memory, topped up with
/// the latest history rows of this node up to [`LIST_RECENT`] ended jobs.
async fn list_jobs(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
) -> ApiResult<Json<Vec<JobView>>> {
    let mut views: Vec<JobView> = svc
        .list()
        .iter()
        .filter(|j| me.may_access(j.owner.uid))
        .map(|j| j.view())
        .collect();
    let ended_in_memory = views.iter().filter(|v| v.end_unix_ms.is_some()).count() as u32;
    if ended_in_memory < LIST_RECENT {
        let rows = svc
            .history
            .query(&HistoryQuery {
                limit: LIST_RECENT,
                uid: (!me.is_root()).then_some(me.uid),
                ..Default::default()
            })
            .await
            .map_err(ApiError::internal)?;
        let known: std::collections::HashSet<String> = views.iter().map(|v| v.id.clone()).collect();
        let mut older: Vec<JobView> = rows
            .iter()
            .filter(|r| r.hostname == svc.hostname && !known.contains(&r.id))
            .take((LIST_RECENT - ended_in_memory) as usize)
            .map(JobView::from_row)
            .collect();
        older.reverse(); // the history answers newest first
        older.extend(views);
        views = older;
    }
    Ok(Json(views))
}

fn checked_id(id: &str) -> ApiResult<()> {
    if job::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found("job"))
    }
}

/// A job in memory, or its row in the history (a job from before a restart); 403
/// when it is another user's.
async fn find_view(svc: &Service, me: &Identity, id: &str) -> ApiResult<JobView> {
    checked_id(id)?;
    let view = match svc.get(id) {
        Some(job) => job.view(),
        None => match svc.history.get(id).await {
            Ok(Some(row)) => JobView::from_row(&row),
            Ok(None) => return Err(ApiError::not_found("job")),
            Err(e) => return Err(ApiError::internal(e)),
        },
    };
    if !me.may_access(view.uid) {
        return Err(ApiError::forbidden(format!(
            "job {id} belongs to another user"
        )));
    }
    Ok(view)
}

async fn show_job(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    find_view(&svc, &me, &id).await.map(Json)
}

/// A job in memory, for requests that act on it. One only in the history has ended
/// (409); an unknown id is 404.
async fn live_job(svc: &Service, me: &Identity, id: &str) -> ApiResult<Arc<Job>> {
    checked_id(id)?;
    if let Some(job) = svc.get(id) {
        if !me.may_access(job.owner.uid) {
            return Err(ApiError::forbidden(format!(
                "job {id} belongs to another user"
            )));
        }
        return Ok(job);
    }
    find_view(svc, me, id).await?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("job {id} has ended"),
    ))
}

fn not_running(job: &Job) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("job {} is {}", job.id, job.state().status.as_str()),
    )
}

async fn stop_job(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let job = live_job(&svc, &me, &id).await?;
    let grace = match q.get("grace_s") {
        None => svc.config.kill_grace,
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Duration::from_secs_f64(v),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "grace_s: not seconds in [0, 3600]: {s:?}"
                )))
            }
        },
    };
    if !svc.stop(&job, grace, None) {
        return Err(not_running(&job));
    }
    Ok((StatusCode::ACCEPTED, Json(job.view())))
}

async fn pause_job(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    set_paused(&svc, &me, &id, true).await
}

async fn resume_job(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    set_paused(&svc, &me, &id, false).await
}

async fn set_paused(
    svc: &Service,
    me: &Identity,
    id: &str,
    pause: bool,
) -> ApiResult<Json<JobView>> {
    let job = live_job(svc, me, id).await?;
    {
        let mut st = job.state();
        if st.status != job::Status::Running || st.cancel_requested {
            drop(st);
            return Err(not_running(&job));
        }
        if st.paused != pause {
            if !Job::control(
                &mut st,
                if pause {
                    Control::Pause
                } else {
                    Control::Resume
                },
            ) {
                drop(st);
                return Err(not_running(&job));
            }
            st.paused = pause;
            // A paused job is not stuck; the clock restarts when it resumes.
            st.stuck = false;
            st.last_progress = std::time::Instant::now();
            job.publish_status(&st);
        }
    }
    Ok(Json(job.view()))
}

/// The job's files live under the data directory whether or not it is in memory.
async fn job_dir(svc: &Service, me: &Identity, id: &str) -> ApiResult<std::path::PathBuf> {
    find_view(svc, me, id).await?;
    Ok(svc.config.data_dir.join("jobs").join(id))
}

/// A file of a job directory from byte `from` on. The directory is its user's: no
/// link is followed and only a regular file is served.
async fn stream_file(
    path: &std::path::Path,
    content_type: &'static str,
    from: u64,
) -> ApiResult<Response> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::not_found(&format!(
                "{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
            _ => ApiError::internal(format!(
                "{}: {e}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
        })?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("{name}: {e}")))?;
    if !meta.is_file() {
        return Err(ApiError::internal(format!("{name}: not a regular file")));
    }
    if from > 0 {
        file.seek(std::io::SeekFrom::Start(from.min(meta.len())))
            .await
            .map_err(|e| ApiError::internal(format!("{name}: {e}")))?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn job_trace(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let dir = job_dir(&svc, &me, &id).await?;
    // `from`: a byte offset, so a client following the trace asks only for what it
    // has not read.
    let from = match q.get("from") {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("from: a byte offset, not {v:?}")))?,
        None => 0,
    };
    stream_file(&dir.join("trace.jsonl"), "application/x-ndjson", from).await
}

/// The last `max` bytes of a file, and whether it was cut.
fn tail(path: &std::path::Path, max: u64) -> (String, bool, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), false, 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    (String::from_utf8_lossy(&buf).into_owned(), start > 0, len)
}

async fn job_logs(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let dir = job_dir(&svc, &me, &id).await?;
    if let Some(s) = q.get("stream") {
        let stream = LogStream::parse(s)
            .ok_or_else(|| ApiError::bad_request(format!("stream: stdout or stderr, not {s:?}")))?;
        return stream_file(&dir.join(stream.file_name()), "application/octet-stream", 0).await;
    }
    let mut out = serde_json::Map::new();
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let (text, truncated, len) = tail(&dir.join(stream.file_name()), LOG_JSON_TAIL);
        out.insert(stream.as_str().into(), Value::String(text));
        out.insert(
            format!("{}_truncated", stream.as_str()),
            Value::Bool(truncated),
        );
        out.insert(format!("{}_bytes", stream.as_str()), json!(len));
    }
    Ok(Json(Value::Object(out)).into_response())
}

async fn history(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    for k in q.keys() {
        if !matches!(k.as_str(), "name" | "status" | "limit") {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {k:?} (name, status, limit)"
            )));
        }
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit: an integer in [1, {MAX_HISTORY_LIMIT}], not {s:?}"
                )))
            }
        },
    };
    let status = match q.get("status") {
        None => None,
        Some(s) => match job::Status::parse(s).filter(|st| st.is_final()) {
            Some(st) => Some(st),
            None => {
                return Err(ApiError::bad_request(format!(
                    "status: one of succeeded, failed, timed_out, cancelled, startup_failed, \
                     not {s:?}"
                )))
            }
        },
    };
    let rows = svc
        .history
        .query(&HistoryQuery {
            name: q.get("name").cloned(),
            status,
            limit,
            uid: (!me.is_root()).then_some(me.uid),
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "rows": rows })))
}

async fn job_stream(
    State(svc): State<Arc<Service>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // An unknown job is a 404, another user's a 403, whatever the request looks like.
    let view = find_view(&svc, &me, &id).await?;
    let ws = ws.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let replay = q.get("replay").is_some_and(|v| v == "1" || v == "true");
    let job = svc.get(&id);
    let dir = svc.config.data_dir.join("jobs").join(&id);
    Ok(ws.on_upgrade(move |socket| async move {
        let _ = stream_to(socket, job, view, dir, replay).await;
    }))
}

async fn send(socket: &mut WebSocket, text: String) -> Result<()> {
    socket
        .send(Message::Text(text.into()))
        .await
        .context("sending a stream message")
}

/// Replays a log file's sent lines up to `upto` bytes.
async fn replay_log(
    socket: &mut WebSocket,
    dir: &std::path::Path,
    stream: LogStream,
    upto: u64,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let Ok(file) = tokio::fs::File::open(dir.join(stream.file_name())).await else {
        return Ok(());
    };
    // Cut into the same pieces as the live messages, holding at most one piece and
    // one read buffer in memory whatever the output looks like.
    let mut file = file.take(upto);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        pending.extend_from_slice(&buf[..n]);
        let at_end = n == 0;
        let mut start = 0;
        while let Some((len, used)) = job::next_piece(&pending[start..], at_end) {
            let line = String::from_utf8_lossy(&pending[start..start + len]);
            let msg = StreamMsg::output(stream, &line);
            send(socket, serde_json::to_string(&msg)?).await?;
            start += used;
        }
        pending.drain(..start);
        if at_end {
            return Ok(());
        }
    }
}

async fn stream_to(
    mut socket: WebSocket,
    job: Option<Arc<Job>>,
    view: JobView,
    dir: std::path::PathBuf,
    replay: bool,
) -> Result<()> {
    // Subscribe and read the output marks under the output lock: no line is sent
    // between the two, so the replay covers exactly what the live messages do not.
    let subscribed = job.as_ref().and_then(|job| {
        let mark_guard = job.output_mark();
        let mark = *mark_guard;
        let st = job.state();
        st.events.as_ref().map(|tx| {
            (
                tx.subscribe(),
                mark,
                serde_json::to_string(&job.status_msg(&st)).unwrap_or_default(),
            )
        })
    });
    let (Some(_), Some((mut rx, mark, status))) = (job.as_ref(), subscribed) else {
        // Ended: the whole output (on request), then the final view.
        if replay {
            replay_log(&mut socket, &dir, LogStream::Stdout, u64::MAX).await?;
            replay_log(&mut socket, &dir, LogStream::Stderr, u64::MAX).await?;
        }
        let view = job.map(|j| j.view()).unwrap_or(view);
        let ended = serde_json::to_string(&StreamMsg::End { job: &view })?;
        send(&mut socket, ended).await?;
        let _ = socket.send(Message::Close(None)).await;
        return Ok(());
    };
    send(&mut socket, status).await?;
    if replay {
        replay_log(&mut socket, &dir, LogStream::Stdout, mark.stdout).await?;
        replay_log(&mut socket, &dir, LogStream::Stderr, mark.stderr).await?;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => {
                    let last = text.starts_with("{\"type\":\"end\"");
                    send(&mut socket, text.to_string()).await?;
                    if last {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    send(&mut socket, serde_json::to_string(&StreamMsg::Lagged { skipped: n })?).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            // The client closed or went away.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then stops every job cleanly (their rows are
/// written) before returning.
pub async fn serve(svc: Arc<Service>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let app = router(svc.clone());
    let unix = bind_unix(&svc.config.socket)?;
    eprintln!(
        "denet-agent serve: listening on unix:{}",
        svc.config.socket.display()
    );
    let mut servers = tokio::task::JoinSet::new();
    let (done_tx, _) = tokio::sync::watch::channel(false);
    let stopped = |rx: tokio::sync::watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|done| *done).await;
    };
    let unix_app = app.clone().into_make_service_with_connect_info::<Peer>();
    servers.spawn(
        axum::serve(unix, unix_app)
            .with_graceful_shutdown(stopped(done_tx.subscribe()))
            .into_future(),
    );
    if let Some(addr) = svc.config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        eprintln!(
            "denet-agent serve: listening on http://{}",
            listener.local_addr()?
        );
        let tcp_app = app.into_make_service_with_connect_info::<Peer>();
        servers.spawn(
            axum::serve(listener, tcp_app)
                .with_graceful_shutdown(stopped(done_tx.subscribe()))
                .into_future(),
        );
    }
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("denet-agent serve: stopping: ending every job and writing its history row");
    tokio::select! {
        () = svc.shutdown() => {}
        // A second signal: leave now. Each job's agent sees its control pipe close and
        // stops its job; the next start records them.
        _ = sigint.recv() => anyhow::bail!("interrupted again: stopped without waiting for the jobs"),
        _ = sigterm.recv() => anyhow::bail!("terminated again: stopped without waiting for the jobs"),
    }
    let _ = done_tx.send(true);
    // Streams and idle connections get a moment to close.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&svc.config.socket);
    if let Some(node) = &svc.node {
        let _ = std::fs::remove_file(node.socket());
    }
    eprintln!("denet-agent serve: stopped");
    Ok(())
}

/// Binds the API's Unix socket: as root (the node's service) every local user may
/// connect, each identified by the kernel; otherwise it is owner-only.
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    let node = nix::unistd::geteuid().is_root();
    let listener = crate::node::daemon::bind_socket(path, node).context("--socket")?;
    listener.set_nonblocking(true).context("--socket")?;
    tokio::net::UnixListener::from_std(listener).context("--socket")
}
