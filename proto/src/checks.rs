//! What every service checks of the values that cross its door, in one place: what a task
//! id may be, which resources are numbers at all, what an environment may hold. The master
//! refuses a launch that breaks these; the agent checks again before it makes a sandbox,
//! since it is the one whose disk and processes are at stake.
//!
//! Each rule exists because something downstream turns the value into a path, a system
//! call's argument, or arithmetic.

use std::fmt;

use crate::agent::v1::{FetchUri, Range, Resources, TaskInfo};

/// Longest task, framework or agent id, in bytes: Mesos' limit (`NAME_MAX`), since an id
/// names a sandbox directory.
pub const MAX_ID_BYTES: usize = 255;

/// The largest cpus one agent may advertise or one task may ask for. Far above any machine;
/// it exists so that sums over thousands of tasks stay finite and exact enough to compare.
pub const MAX_CPUS: f64 = 1_000_000.0;

/// The largest memory or disk, in MB (a million TB), for the same reason.
pub const MAX_MEGABYTES: f64 = 1e12;

/// Most port ranges an agent may advertise (or a resource set may hold): range arithmetic
/// is quadratic in them.
pub const MAX_PORT_RANGES: usize = 1024;

/// The highest port number.
pub const MAX_PORT: u64 = 65_535;

/// The most URIs one task fetches.
pub const MAX_FETCH_URIS: usize = 64;

/// The longest fetch URI or output file name, in bytes.
pub const MAX_FETCH_URI_BYTES: usize = 4096;

/// The URI schemes the fetcher downloads.
pub const FETCH_SCHEMES: [&str; 3] = ["http", "https", "file"];

/// Why an id is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong {
        bytes: usize,
    },
    /// `.` or `..`: a path component of its own.
    DotPath,
    /// A control character, `/` or `\`.
    InvalidCharacter(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong { bytes } => write!(f, "is {bytes} bytes long; at most {MAX_ID_BYTES} are allowed"),
            IdError::DotPath => write!(f, "must not be '.' or '..'"),
            IdError::InvalidCharacter(c) => {
                write!(f, "must not contain {c:?} (control characters and path separators are refused)")
            }
        }
    }
}

impl std::error::Error for IdError {}

/// Mesos' rules for ids: not empty, at most [`MAX_ID_BYTES`], not `.` or `..`, no control
/// characters and no path separators.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong { bytes: id.len() });
    }
    if id == "." || id == ".." {
        return Err(IdError::DotPath);
    }
    match id.chars().find(|&c| c.is_control() || c == '/' || c == '\\') {
        Some(c) => Err(IdError::InvalidCharacter(c)),
        None => Ok(()),
    }
}

/// A scalar resource: a finite number, not negative, at most `max`.
pub fn check_scalar(name: &str, value: f64, max: f64) -> Result<(), String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{name} must be a finite number of at least 0, not {value}"));
    }
    if value > max {
        return Err(format!("{name} is {value}; at most {max} is allowed"));
    }
    Ok(())
}

/// Port ranges: each `begin <= end` within 0..=65535, at most [`MAX_PORT_RANGES`] of them.
pub fn check_port_ranges(name: &str, ranges: &[Range]) -> Result<(), String> {
    if ranges.len() > MAX_PORT_RANGES {
        return Err(format!("{name} has {} port ranges; at most {MAX_PORT_RANGES} are allowed", ranges.len()));
    }
    for range in ranges {
        if range.begin > range.end || range.end > MAX_PORT {
            return Err(format!(
                "{name} has the port range [{}-{}]; ports are 0 to {MAX_PORT}",
                range.begin, range.end
            ));
        }
    }
    Ok(())
}

/// Resources an agent advertises or a task asks for.
pub fn check_resources(name: &str, resources: &Resources) -> Result<(), String> {
    check_scalar(&format!("{name}.cpus"), resources.cpus, MAX_CPUS)?;
    check_scalar(&format!("{name}.mem_mb"), resources.mem_mb, MAX_MEGABYTES)?;
    check_scalar(&format!("{name}.disk_mb"), resources.disk_mb, MAX_MEGABYTES)?;
    check_port_ranges(&format!("{name}.ports"), &resources.ports)
}

/// An environment variable a process can be given: a name that is not empty and holds no
/// `=` or NUL (`execve` would split or cut it), a value with no NUL.
pub fn check_env(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an environment variable has an empty name".to_owned());
    }
    if name.contains(['=', '\0']) {
        return Err(format!("environment variable name {name:?} contains '=' or NUL"));
    }
    if value.contains('\0') {
        return Err(format!("environment variable {name} has a NUL in its value"));
    }
    Ok(())
}

/// Everything of a task a master validates before it launches it and an agent before it
/// runs it: its id, resources, ports, command line and environment.
pub fn check_task(task: &TaskInfo) -> Result<(), String> {
    check_id(&task.task_id).map_err(|error| format!("task id {:?} {error}", task.task_id))?;
    let id = &task.task_id;
    if let Some(resources) = &task.resources {
        check_resources(&format!("task {id}: resources"), resources)?;
    }
    if let Some(command) = &task.command {
        if command.value.contains('\0') || command.arguments.iter().any(|a| a.contains('\0')) {
            return Err(format!("task {id}: the command line contains a NUL"));
        }
        for (name, value) in &command.environment {
            check_env(name, value).map_err(|error| format!("task {id}: {error}"))?;
        }
    }
    if let Some(container) = &task.container {
        for mapping in &container.port_mappings {
            for (field, port) in [("host_port", mapping.host_port), ("container_port", mapping.container_port)] {
                if u64::from(port) > MAX_PORT {
                    return Err(format!("task {id}: {field} {port} is not a port (0 to {MAX_PORT})"));
                }
            }
        }
        if container.image.contains('\0') {
            return Err(format!("task {id}: the image name contains a NUL"));
        }
    }
    if task.fetch.len() > MAX_FETCH_URIS {
        return Err(format!("task {id}: {} fetch URIs; at most {MAX_FETCH_URIS}", task.fetch.len()));
    }
    for fetch in &task.fetch {
        check_fetch_uri(fetch).map_err(|error| format!("task {id}: {error}"))?;
    }
    Ok(())
}

/// A fetch URI the fetcher can download (its scheme, its length, no control characters),
/// and an output file that names a place inside the sandbox.
pub fn check_fetch_uri(fetch: &FetchUri) -> Result<(), String> {
    let uri = &fetch.uri;
    if uri.len() > MAX_FETCH_URI_BYTES {
        return Err(format!("fetch URI of {} bytes; at most {MAX_FETCH_URI_BYTES}", uri.len()));
    }
    if uri.chars().any(char::is_control) {
        return Err(format!("fetch URI {uri:?} contains a control character"));
    }
    let scheme = uri.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !scheme.as_deref().is_some_and(|scheme| FETCH_SCHEMES.contains(&scheme)) {
        return Err(format!("fetch URI {uri:?}: only {} URIs are fetched", FETCH_SCHEMES.join(", ")));
    }
    if !fetch.output_file.is_empty() {
        check_sandbox_path(&fetch.output_file)
            .map_err(|why| format!("fetch output file {:?} {why}", fetch.output_file))?;
    }
    Ok(())
}

/// A path relative to a sandbox that stays in it: not absolute, no `..`, no control
/// characters, not too long. (Symbolic links are the writer's to refuse.)
pub fn check_sandbox_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_FETCH_URI_BYTES {
        return Err(format!("is {} bytes long; at most {MAX_FETCH_URI_BYTES}", path.len()));
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if path.starts_with('/') {
        return Err("is absolute; it must be relative to the sandbox".into());
    }
    if path.split('/').any(|part| part == "..") {
        return Err("leaves the sandbox (a `..` component)".into());
    }
    if path.split('/').all(|part| part.is_empty() || part == ".") {
        return Err("names no file".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::{CommandSpec, ContainerSpec, PortMapping};

    #[test]
    fn fetch_uris_are_downloadable_and_stay_in_the_sandbox() {
        let fetch = |uri: &str, output_file: &str| FetchUri {
            uri: uri.into(),
            output_file: output_file.into(),
            ..Default::default()
        };
        assert!(check_fetch_uri(&fetch("https://example.com/app.tgz", "")).is_ok());
        assert!(check_fetch_uri(&fetch("HTTP://example.com/run.sh", "bin/run")).is_ok());
        assert!(check_fetch_uri(&fetch("file:///srv/artifacts/app.zip", "./app.zip")).is_ok());
        for (uri, output, expected) in [
            ("ftp://example.com/x", "", "only http, https, file"),
            ("/srv/x", "", "only http, https, file"),
            ("http://example.com/x\n", "", "control character"),
            ("http://example.com/x", "../x", "leaves the sandbox"),
            ("http://example.com/x", "a/../../x", "leaves the sandbox"),
            ("http://example.com/x", "/etc/passwd", "absolute"),
            ("http://example.com/x", "./", "names no file"),
        ] {
            let error = check_fetch_uri(&fetch(uri, output)).unwrap_err();
            assert!(error.contains(expected), "{uri} {output}: {error}");
        }
        let many = TaskInfo {
            task_id: "t".into(),
            fetch: vec![fetch("http://x/y", ""); MAX_FETCH_URIS + 1],
            ..Default::default()
        };
        assert!(check_task(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn ids_follow_mesos_rules() {
        assert!(check_id("web.0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e").is_ok());
        assert!(check_id("with spaces:and=signs").is_ok(), "Mesos allows any printable character");
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(".."), Err(IdError::DotPath));
        assert_eq!(check_id("."), Err(IdError::DotPath));
        assert!(check_id("...").is_ok(), "only the path components themselves are refused");
        assert_eq!(check_id("a/b"), Err(IdError::InvalidCharacter('/')));
        assert_eq!(check_id("a\\b"), Err(IdError::InvalidCharacter('\\')));
        assert_eq!(check_id("a\0b"), Err(IdError::InvalidCharacter('\0')));
        assert_eq!(check_id("a\nb"), Err(IdError::InvalidCharacter('\n')));
        assert!(check_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
        assert_eq!(check_id(&"x".repeat(MAX_ID_BYTES + 1)), Err(IdError::TooLong { bytes: MAX_ID_BYTES + 1 }));
        assert!(check_id(&"é".repeat(128)).is_err(), "the limit counts bytes, not characters");
    }

    #[test]
    fn resources_are_finite_and_bounded() {
        let resources = |cpus: f64| Resources { cpus, mem_mb: 64.0, disk_mb: 0.0, ports: Vec::new() };
        assert!(check_resources("r", &resources(0.5)).is_ok());
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
            assert!(check_resources("r", &resources(bad)).is_err(), "{bad}");
        }
        let ports = |begin, end| Resources { ports: vec![Range { begin, end }], ..resources(1.0) };
        assert!(check_resources("r", &ports(31000, 32000)).is_ok());
        assert!(check_resources("r", &ports(0, u64::MAX)).is_err(), "beyond 65535");
        assert!(check_resources("r", &ports(10, 9)).is_err(), "an inverted range");
        let many = Resources {
            ports: (0..=MAX_PORT_RANGES as u64).map(|p| Range { begin: p, end: p }).collect(),
            ..resources(1.0)
        };
        assert!(check_resources("r", &many).is_err());
    }

    #[test]
    fn tasks_with_unusable_environments_or_ports_are_refused() {
        let task = |name: &str, value: &str| TaskInfo {
            task_id: "t".into(),
            command: Some(CommandSpec {
                environment: [(name.to_owned(), value.to_owned())].into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_task(&task("PORT0", "31000")).is_ok());
        assert!(check_task(&task("A=B", "x")).is_err());
        assert!(check_task(&task("A\0", "x")).is_err());
        assert!(check_task(&task("", "x")).is_err());
        assert!(check_task(&task("A", "x\0y")).is_err());
        let ported = TaskInfo {
            task_id: "t".into(),
            container: Some(ContainerSpec {
                port_mappings: vec![PortMapping { host_port: 70_000, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_task(&ported).unwrap_err().contains("host_port 70000"));
        assert!(check_task(&TaskInfo { task_id: "../x".into(), ..Default::default() }).is_err());
    }
}
