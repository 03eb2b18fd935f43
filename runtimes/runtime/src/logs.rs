//! Task output on the agent's disk: how it is rotated ([`LogRotation`]), and how containerd's
//! shim is told to hand a task's output to Marina's rotating writer ([`ShimLogger`]).
//!
//! A task writes as much as it likes; the disk it writes to is the agent's, shared with the
//! checkpoints that keep status updates. So every runtime that writes a task's output to
//! files rotates them, and the engines that keep the output themselves (Docker) are told to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a task's `stdout` and `stderr` files are kept from filling the disk: when one would
/// grow past `max_bytes`, it is renamed `<name>.1` (older ones shift to `.2`, … and the one
/// past `keep` is deleted) and a new one is begun, as logrotate's `size`/`rotate` do. A
/// stream so takes at most `(keep + 1) × max_bytes`. Readers of a task's output read the
/// current file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// The size at which a file is rotated. At least 1.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one; 0 keeps only the current file (emptied
    /// when full).
    pub keep: u32,
}

impl LogRotation {
    /// What `max_bytes` defaults to: 10 MiB, a common Docker `max-size`, and ten times the
    /// tail the agent returns by default.
    pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
    /// What `keep` defaults to: 3 rotated files (logrotate's habit), so 40 MiB per stream.
    pub const DEFAULT_KEEP: u32 = 3;

    /// No rotation: files grow without bound. What a supervisor assumes when it is given no
    /// rotation (started by an agent from before rotation existed).
    pub const UNBOUNDED: LogRotation = LogRotation { max_bytes: u64::MAX, keep: 0 };

    /// The most one stream keeps on disk, saturating.
    pub fn max_total_bytes(&self) -> u64 {
        self.max_bytes.saturating_mul(u64::from(self.keep).saturating_add(1))
    }
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation { max_bytes: Self::DEFAULT_MAX_BYTES, keep: Self::DEFAULT_KEEP }
    }
}

/// A logging binary for containerd's shim (the `binary://` stdio scheme): the shim starts it
/// with the task's stdout and stderr as file descriptors 3 and 4 and waits on descriptor 5
/// until it is ready; the binary writes what it reads to `stdout` and `stderr` in `dir`,
/// rotated. Marina's is `marina-supervise` (it tells the two kinds of invocation apart by
/// [`ShimLogger::parse`]).
///
/// The shim passes the URI's query as arguments, `key value` pairs in no particular order
/// (Go iterates over a map), so each setting is one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimLogger {
    /// Where the `stdout` and `stderr` files are (the task's sandbox).
    pub dir: PathBuf,
    pub rotation: LogRotation,
}

/// The query keys of [`ShimLogger`]'s URI, which the shim turns into arguments.
const KEY_DIR: &str = "marina-log-dir";
const KEY_MAX_BYTES: &str = "max-bytes";
const KEY_KEEP: &str = "keep";

impl ShimLogger {
    /// The stdio URI that has the shim start `binary` as this logger. Both paths must be
    /// absolute (the shim runs the binary from its own working directory).
    pub fn uri(&self, binary: &Path) -> String {
        format!(
            "binary://{}?{KEY_DIR}={}&{KEY_MAX_BYTES}={}&{KEY_KEEP}={}",
            percent_encode(binary.as_os_str().as_encoded_bytes(), true),
            percent_encode(self.dir.as_os_str().as_encoded_bytes(), false),
            self.rotation.max_bytes,
            self.rotation.keep,
        )
    }

    /// The logger's settings, if `args` are those of a shim starting one (`None` for any
    /// other command line); an error names what is wrong with a logger's arguments.
    pub fn parse(args: &[OsString]) -> Option<Result<ShimLogger, String>> {
        let pairs: Vec<(&OsString, Option<&OsString>)> = args.chunks(2).map(|pair| (&pair[0], pair.get(1))).collect();
        pairs.iter().find(|(key, _)| key.as_os_str() == KEY_DIR)?;
        let mut dir = None;
        let mut rotation = LogRotation::UNBOUNDED;
        for (key, value) in pairs {
            let value = value.ok_or_else(|| format!("{key:?} has no value"));
            let number = |value: Result<&OsString, String>| {
                let value = value?;
                value
                    .to_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("{key:?}: {value:?} is not a number"))
            };
            let parsed = match key.to_str() {
                Some(KEY_DIR) => value.map(|value| dir = Some(PathBuf::from(value))),
                Some(KEY_MAX_BYTES) => number(value).map(|max| rotation.max_bytes = max.max(1)),
                Some(KEY_KEEP) => number(value)
                    .and_then(|keep| u32::try_from(keep).map_err(|_| format!("keep {keep} is too large")))
                    .map(|keep| rotation.keep = keep),
                _ => Err(format!("unexpected argument {key:?}")),
            };
            if let Err(error) = parsed {
                return Some(Err(error));
            }
        }
        let dir = dir.filter(|dir| dir.is_absolute());
        Some(dir.map(|dir| ShimLogger { dir, rotation }).ok_or_else(|| format!("{KEY_DIR} must be an absolute path")))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` in a path), so
/// Go's URL parser gives back exactly these bytes.
fn percent_encode(bytes: &[u8], path: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') || (path && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What containerd's shim makes of a URI: the path, and the query as `key value`
    /// arguments (decoded), here in reverse order as a Go map may give them.
    fn shim_arguments(uri: &str) -> (String, Vec<OsString>) {
        let decode = |text: &str| {
            let mut bytes = Vec::new();
            let mut rest = text.as_bytes();
            while let Some((&byte, tail)) = rest.split_first() {
                if byte == b'%' {
                    let hex = std::str::from_utf8(&tail[..2]).unwrap();
                    bytes.push(u8::from_str_radix(hex, 16).unwrap());
                    rest = &tail[2..];
                } else {
                    bytes.push(byte);
                    rest = tail;
                }
            }
            String::from_utf8(bytes).unwrap()
        };
        let rest = uri.strip_prefix("binary://").unwrap();
        let (path, query) = rest.split_once('?').unwrap();
        let mut args = Vec::new();
        for pair in query.split('&').rev() {
            let (key, value) = pair.split_once('=').unwrap();
            args.push(OsString::from(decode(key)));
            args.push(OsString::from(decode(value)));
        }
        (decode(path), args)
    }

    #[test]
    fn a_shim_logger_round_trips_through_its_uri() {
        let logger = ShimLogger {
            dir: "/var/lib/marina/agent/sandboxes/web%2Fx+y &z=1".into(),
            rotation: LogRotation { max_bytes: 4096, keep: 2 },
        };
        let uri = logger.uri(Path::new("/opt/marina bin/marina-supervise"));
        assert!(uri.starts_with("binary:///opt/marina%20bin/marina-supervise?"), "{uri}");
        let (binary, args) = shim_arguments(&uri);
        assert_eq!(binary, "/opt/marina bin/marina-supervise");
        assert_eq!(ShimLogger::parse(&args), Some(Ok(logger)));
    }

    #[test]
    fn other_command_lines_are_not_a_shim_logger() {
        let args: Vec<OsString> = ["--exit-file", "/x", "--", "/bin/true"].map(OsString::from).to_vec();
        assert_eq!(ShimLogger::parse(&args), None);
        let bad: Vec<OsString> = [KEY_DIR, "relative", KEY_KEEP, "x"].map(OsString::from).to_vec();
        assert!(ShimLogger::parse(&bad).unwrap().unwrap_err().contains("not a number"));
        let relative: Vec<OsString> = [KEY_DIR, "relative"].map(OsString::from).to_vec();
        assert!(ShimLogger::parse(&relative).unwrap().unwrap_err().contains("absolute"));
    }

    #[test]
    fn the_most_a_stream_keeps_saturates() {
        assert_eq!(LogRotation::default().max_total_bytes(), 40 * 1024 * 1024);
        assert_eq!(LogRotation { max_bytes: u64::MAX, keep: 3 }.max_total_bytes(), u64::MAX);
    }
}
