//! Talking to a running service: the HTTP/WebSocket client (`http`) and the
//! `denet-agent jobs` command line built on it (`cli`).

pub mod cli;
pub mod http;
pub mod views;
pub use http::{Answer, Client, Server};
