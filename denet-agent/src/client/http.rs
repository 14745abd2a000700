//! A small client for the `serve` API over TCP or a Unix socket: JSON requests and
//! the job stream (WebSocket). Used by `denet-agent jobs` and the tests.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{tungstenite::client::IntoClientRequest, WebSocketStream};

/// Where the service is: `http://HOST:PORT` or `unix:/path/to/socket`.
#[derive(Debug, Clone)]
pub enum Server {
    Tcp(String),
    Unix(PathBuf),
}

impl std::str::FromStr for Server {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Server::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') {
            bail!("server {s:?}: expected http://HOST:PORT or unix:/path");
        }
        Ok(Server::Tcp(hostport.to_string()))
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[derive(Debug, Clone)]
pub struct Client {
    server: Server,
    token: Option<String>,
}

/// A JSON answer (or the raw body when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the service answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON body of a 2xx answer, or the service's error message.
    pub fn ok_json(&self) -> Result<Value> {
        let v = self.json();
        if self.status.is_success() {
            return v;
        }
        match v.ok().and_then(|v| v["error"].as_str().map(str::to_string)) {
            Some(msg) => bail!("{} ({})", msg, self.status),
            None => bail!("the service answered {}", self.status),
        }
    }
}

impl Client {
    pub fn new(server: Server, token: Option<String>) -> Self {
        Client { server, token }
    }

    async fn connect(&self) -> Result<Box<dyn Io>> {
        Ok(match &self.server {
            Server::Tcp(hp) => {
                Box::new(tokio::net::TcpStream::connect(hp).await.with_context(|| {
                    format!("connecting to {hp} (is `denet-agent serve` running?)")
                })?)
            }
            Server::Unix(p) => {
                Box::new(tokio::net::UnixStream::connect(p).await.with_context(|| {
                    format!(
                        "connecting to {} (is `denet-agent serve` running?)",
                        p.display()
                    )
                })?)
            }
        })
    }

    fn host(&self) -> &str {
        match &self.server {
            Server::Tcp(hp) => hp,
            Server::Unix(_) => "localhost",
        }
    }

    /// One request on its own connection.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.host());
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        self.send(req.body(Full::new(body))?).await
    }

    /// Sends a prepared request (raw bodies, for tests of bad input).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Answer> {
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP handshake")?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        Ok(Answer { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Answer> {
        self.request(Method::POST, path, body).await
    }

    /// Opens a WebSocket (the job stream).
    pub async fn websocket(&self, path: &str) -> Result<WebSocketStream<Box<dyn Io>>> {
        let mut req = format!("ws://{}{}", self.host(), path)
            .into_client_request()
            .context("building the stream request")?;
        if let Some(t) = &self.token {
            req.headers_mut().insert(
                hyper::header::AUTHORIZATION,
                format!("Bearer {t}").parse().context("token header")?,
            );
        }
        let io = self.connect().await?;
        let (ws, _) = tokio_tungstenite::client_async(req, io)
            .await
            .context("opening the job stream")?;
        Ok(ws)
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
