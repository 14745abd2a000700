//! Who is asking: the caller of a request, taken from the kernel (the Unix socket
//! peer's credentials) or from a token that the administrator mapped to a local
//! user, never from anything the request says about itself.

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use axum::serve::IncomingStream;

/// A local user the service acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: PathBuf,
    pub shell: PathBuf,
    /// Supplementary groups, from the group database (as `initgroups` would set).
    pub groups: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("uid {0} has no entry in the user database")]
    NoSuchUid(u32),
    #[error("user {0:?} has no entry in the user database")]
    NoSuchUser(String),
    #[error("looking up the user database: {0}")]
    Lookup(#[source] nix::Error),
    #[error("{path}: {problem}")]
    Tokens { path: PathBuf, problem: String },
}

impl Identity {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// May this caller see and act on what `owner_uid` owns? Its own things, and
    /// root everything.
    pub fn may_access(&self, owner_uid: u32) -> bool {
        self.is_root() || self.uid == owner_uid
    }

    pub fn of_uid(uid: u32) -> Result<Identity, IdentityError> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(IdentityError::Lookup)?
            .ok_or(IdentityError::NoSuchUid(uid))?;
        Self::from_user(user)
    }

    pub fn of_name(name: &str) -> Result<Identity, IdentityError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(IdentityError::Lookup)?
            .ok_or_else(|| IdentityError::NoSuchUser(name.to_string()))?;
        Self::from_user(user)
    }

    fn from_user(user: nix::unistd::User) -> Result<Identity, IdentityError> {
        let groups = CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid]);
        Ok(Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            user: user.name,
            home: user.dir,
            shell: user.shell,
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// What the connection itself says about the peer: the kernel's record of the Unix
/// socket peer, or nothing for TCP (a token must then say who it is).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// `SO_PEERCRED` of a Unix socket peer: the uid and gid it had when it connected.
    pub unix: Option<(u32, u32)>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer {
            unix: stream.io().peer_cred().ok().map(|c| (c.uid(), c.gid())),
        }
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(_stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer { unix: None }
    }
}

/// The tokens that TCP callers present, each mapped to the local user it acts as.
///
/// File format: one `TOKEN USER` pair per line (`USER` a name or a numeric uid);
/// blank lines and lines starting with `#` are ignored. A token acts as root only
/// when its line names `root` (or uid 0) explicitly. The file must belong to the
/// user the service runs as and be unreadable by anyone else.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, Identity>,
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, IdentityError> {
        let bad = |problem: String| IdentityError::Tokens {
            path: path.to_path_buf(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(bad(format!(
                "belongs to uid {}, not to the service's user",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o}: others may read it (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(|(line, problem)| bad(format!("line {line}: {problem}")))
    }

    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(token), Some(user), None) = (words.next(), words.next(), words.next()) else {
                return Err((i + 1, "expected `TOKEN USER`".into()));
            };
            if token.len() < MIN_TOKEN_BYTES {
                return Err((i + 1, format!("token shorter than {MIN_TOKEN_BYTES} bytes")));
            }
            let identity = match user.parse::<u32>() {
                Ok(uid) => Identity::of_uid(uid),
                Err(_) => Identity::of_name(user),
            }
            .map_err(|e| (i + 1, e.to_string()))?;
            if by_token.insert(token.to_string(), identity).is_some() {
                return Err((i + 1, "the same token appears twice".into()));
            }
        }
        if by_token.is_empty() {
            return Err((0, "no tokens".into()));
        }
        Ok(Tokens { by_token })
    }

    /// The user a presented token acts as. Every stored token is compared in full,
    /// without an early exit, so timing tells nothing about near misses.
    pub fn identify(&self, given: &str) -> Option<&Identity> {
        let mut found = None;
        for (token, identity) in &self.by_token {
            if constant_time_eq(token.as_bytes(), given.as_bytes()) {
                found = Some(identity);
            }
        }
        found
    }
}

/// Compares without an early exit, so timing does not leak the token.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn tokens_map_to_the_users_they_name() {
        let t = Tokens::parse("# comment\n\n0123456789abcdef root\nfedcba9876543210 0\n").unwrap();
        assert_eq!(t.identify("0123456789abcdef").map(|i| i.uid), Some(0));
        assert_eq!(t.identify("fedcba9876543210").map(|i| i.uid), Some(0));
        assert!(t.identify("0123456789abcde").is_none());
        assert!(t.identify("").is_none());
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        for (text, want) in [
            ("short root\n", "line 1: token shorter"),
            ("0123456789abcdef\n", "line 1: expected"),
            ("0123456789abcdef root extra\n", "line 1: expected"),
            ("\n0123456789abcdef no-such-user-xyz\n", "line 2: user"),
            (
                "0123456789abcdef root\n0123456789abcdef root\n",
                "line 2: the same token",
            ),
            ("# nothing\n", "no tokens"),
        ] {
            let (line, problem) = Tokens::parse(text).unwrap_err();
            let msg = format!("line {line}: {problem}");
            assert!(
                msg.contains(want) || problem.contains(want),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn only_root_or_the_owner_may_access() {
        let root = Identity::of_uid(0).unwrap();
        let mut other = root.clone();
        other.uid = 65534;
        assert!(root.may_access(65534));
        assert!(other.may_access(65534));
        assert!(!other.may_access(0));
        assert!(!other.may_access(1000));
    }
}
