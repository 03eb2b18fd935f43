//! Marathon path ids: `/prod/web`, the names of apps and groups.
//!
//! A `PathId` is always absolute and canonical: relative ids (`ubuntu`, `../db`) are resolved
//! against a base when they are read, `.` and `..` segments are folded away, and it is written
//! with a leading `/` and no trailing one. Segments follow Marathon's rule (lowercase letters,
//! digits, `-` and `.`, as dot-separated labels that neither start nor end with `-`); since `_`
//! can never occur in a segment, `_` is a safe, reversible separator for coord node names and
//! task ids (`/prod/web` → `prod_web`, tasks `prod_web.<uuid>`, as Marathon does).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Marathon's pattern for one id segment, quoted as-is in its error messages.
pub const ID_SEGMENT_PATTERN: &str =
    r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])|(\.|\.\.)$";

/// Last segments Marathon refuses, as they clash with REST sub-resources.
pub const RESERVED_KEYWORDS: [&str; 3] = ["restart", "tasks", "versions"];

/// An absolute, canonical Marathon path id. The root (`/`) has no segments.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PathId {
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathIdError {
    #[error("invalid path id {id:?}: segment {segment:?} must fully match regular expression '{ID_SEGMENT_PATTERN}'")]
    InvalidSegment { id: String, segment: String },
    #[error(
        "invalid path id {id:?}: must not end with any of the following reserved keywords: restart, tasks, versions"
    )]
    Reserved { id: String },
}

impl PathId {
    pub fn root() -> Self {
        PathId::default()
    }

    /// Reads an id; a relative one is taken relative to the root.
    pub fn parse(id: &str) -> Result<Self, PathIdError> {
        PathId::resolve(id, &PathId::root())
    }

    /// Reads `id`, relative to `base` unless it starts with `/`, and checks every segment.
    pub fn resolve(id: &str, base: &PathId) -> Result<Self, PathIdError> {
        let path = PathId::resolve_unchecked(id, base);
        if let Some(segment) = path.segments.iter().find(|s| !is_valid_segment(s)) {
            return Err(PathIdError::InvalidSegment { id: id.to_owned(), segment: segment.clone() });
        }
        if path.ends_with_reserved_keyword() {
            return Err(PathIdError::Reserved { id: id.to_owned() });
        }
        Ok(path)
    }

    /// Resolves like [`PathId::resolve`] without checking segments, so that validation can
    /// report a bad id at its JSON path instead of failing the whole read.
    pub(crate) fn resolve_unchecked(id: &str, base: &PathId) -> Self {
        let mut segments = if id.starts_with('/') { Vec::new() } else { base.segments.clone() };
        for part in id.split('/').filter(|p| !p.is_empty()) {
            match part {
                "." => {}
                ".." => {
                    segments.pop();
                }
                _ => segments.push(part.to_owned()),
            }
        }
        PathId { segments }
    }

    /// `id` resolved against `base` without checking its segments (to say where an id
    /// points before saying what is wrong with it).
    pub fn resolve_lenient(id: &str, base: &PathId) -> Self {
        PathId::resolve_unchecked(id, base)
    }

    /// A group id from a URL: every segment valid, reserved words allowed (`/tasks` may be a
    /// group of `/tasks/web`; only an app's own name may not be one).
    pub fn parse_group(id: &str) -> Result<Self, PathIdError> {
        let path = PathId::resolve_unchecked(id, &PathId::root());
        match path.segments.iter().find(|s| !is_valid_segment(s)) {
            Some(segment) => Err(PathIdError::InvalidSegment { id: id.to_owned(), segment: segment.clone() }),
            None => Ok(path),
        }
    }

    /// The ancestor `depth` segments deep (the root at 0; `self` at its own depth or more).
    pub fn ancestor(&self, depth: usize) -> PathId {
        PathId { segments: self.segments[..depth.min(self.segments.len())].to_vec() }
    }

    /// Marathon's complaints about this id, worded as Marathon words them (empty if valid).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.segments.iter().all(|s| is_valid_segment(s)) {
            problems.push(format!("must fully match regular expression '{ID_SEGMENT_PATTERN}'"));
        }
        if self.ends_with_reserved_keyword() {
            problems.push(format!(
                "must not end with any of the following reserved keywords: {}",
                RESERVED_KEYWORDS.join(", ")
            ));
        }
        problems
    }

    pub fn is_valid(&self) -> bool {
        self.problems().is_empty()
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The last segment: `web` for `/prod/web`; `None` for the root.
    pub fn name(&self) -> Option<&str> {
        self.segments.last().map(String::as_str)
    }

    /// The enclosing group; the root is its own parent.
    pub fn parent(&self) -> PathId {
        let mut segments = self.segments.clone();
        segments.pop();
        PathId { segments }
    }

    /// `self` with `id` appended, resolved as a relative id (so `..` climbs out of `self`).
    pub fn join(&self, id: &str) -> PathId {
        PathId::resolve_unchecked(id.trim_start_matches('/'), self)
    }

    /// True if `other` is `self` or lies below it.
    pub fn contains(&self, other: &PathId) -> bool {
        other.segments.starts_with(&self.segments)
    }

    /// Marathon's "safe path": segments joined by `_` (`/prod/web` → `prod_web`; root → ``).
    /// Reversible for valid ids, since `_` never occurs in a segment; used for coord node
    /// names and task ids.
    pub fn safe_path(&self) -> String {
        self.segments.join("_")
    }

    /// The inverse of [`PathId::safe_path`], checking every segment.
    pub fn from_safe_path(safe: &str) -> Result<Self, PathIdError> {
        let path = PathId { segments: safe.split('_').filter(|s| !s.is_empty()).map(str::to_owned).collect() };
        PathId::resolve(&path.to_string(), &PathId::root())
    }

    /// What every Marathon task id of this app starts with: `prod_web.` for `/prod/web`.
    pub fn task_id_prefix(&self) -> String {
        format!("{}.", self.safe_path())
    }

    /// A Marathon task id of this app: `prod_web.<run_id>`, `run_id` usually a UUID.
    pub fn task_id(&self, run_id: &str) -> String {
        format!("{}{run_id}", self.task_id_prefix())
    }

    /// The app a Marathon task or instance id belongs to: `prod_web.4f1a…` → `/prod/web`.
    ///
    /// Understands the legacy `<app>.<uuid>` form and Marathon 1.x's `<app>.instance-<uuid>…`
    /// and `<app>.marathon-<uuid>` forms. Since segments may contain dots — even a label that
    /// looks like a UUID (`/b.0c6f8c3e-…` is a valid app id) — the id is split at the last `.`
    /// followed by a UUID (what follows a run id, `._app.1`, holds none), or else at the last
    /// `.`.
    pub fn app_id_of_task(task_id: &str) -> Option<PathId> {
        let split = task_id
            .char_indices()
            .rev()
            .filter(|&(_, c)| c == '.')
            .map(|(i, _)| i)
            .find(|&i| starts_with_run_id(&task_id[i + 1..]))
            .or_else(|| task_id.rfind('.'))?;
        let app = PathId::from_safe_path(&task_id[..split]).ok()?;
        (!app.is_root()).then_some(app)
    }

    fn ends_with_reserved_keyword(&self) -> bool {
        self.segments.last().is_some_and(|last| RESERVED_KEYWORDS.contains(&last.as_str()))
    }
}

/// Marathon's segment rule: dot-separated labels of `[a-z0-9-]`, not starting or ending in `-`.
fn is_valid_segment(segment: &str) -> bool {
    segment.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

fn starts_with_run_id(rest: &str) -> bool {
    let rest = rest.strip_prefix("instance-").or_else(|| rest.strip_prefix("marathon-")).unwrap_or(rest);
    let b = rest.as_bytes();
    let is_uuid = b.len() >= 36
        && b[..36].iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    is_uuid && matches!(b.get(36), None | Some(b'.' | b'_'))
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathId({self})")
    }
}

impl FromStr for PathId {
    type Err = PathIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathId::parse(s)
    }
}

impl Serialize for PathId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PathId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PathId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> PathId {
        PathId::parse(id).unwrap()
    }

    #[test]
    fn parses_relative_and_absolute_ids_canonically() {
        assert_eq!(p("ubuntu").to_string(), "/ubuntu");
        assert_eq!(p("/prod/web/").to_string(), "/prod/web");
        assert_eq!(p("//prod//web").segments(), ["prod", "web"]);
        assert_eq!(p("/").to_string(), "/");
        assert!(p("/").is_root() && p("").is_root());
        assert_eq!(p("/a/./b/../c").to_string(), "/a/c");
        assert_eq!(p("/../../x").to_string(), "/x");
        assert_eq!(p("my.app-1/v1.2").to_string(), "/my.app-1/v1.2");
    }

    #[test]
    fn resolves_against_a_base() {
        let base = p("/prod/backend");
        assert_eq!(PathId::resolve("db", &base).unwrap().to_string(), "/prod/backend/db");
        assert_eq!(PathId::resolve("../frontend", &base).unwrap().to_string(), "/prod/frontend");
        assert_eq!(PathId::resolve("./cache", &base).unwrap().to_string(), "/prod/backend/cache");
        assert_eq!(PathId::resolve("/other", &base).unwrap().to_string(), "/other");
        assert_eq!(base.join("../x").to_string(), "/prod/x");
    }

    #[test]
    fn rejects_segments_marathon_rejects() {
        for bad in ["/Ubuntu", "a b", "a#b", "-dash", "dash-", "a_b", "a..b", "x/.hidden", "trailing./x", "ü"] {
            assert!(matches!(PathId::parse(bad), Err(PathIdError::InvalidSegment { .. })), "{bad:?} must be rejected");
        }
        assert!(matches!(PathId::parse("/app/tasks"), Err(PathIdError::Reserved { .. })));
        assert!(PathId::parse("/tasks/app").is_ok());
        let unchecked = PathId::resolve_unchecked("/Bad_Id/versions", &PathId::root());
        assert_eq!(unchecked.problems().len(), 2);
        assert!(unchecked.problems()[0].starts_with("must fully match regular expression '^(([a-z0-9]"));
    }

    #[test]
    fn parent_name_and_containment() {
        let web = p("/prod/web");
        assert_eq!(web.parent(), p("/prod"));
        assert_eq!(web.parent().parent(), PathId::root());
        assert_eq!(PathId::root().parent(), PathId::root());
        assert_eq!(web.name(), Some("web"));
        assert!(p("/prod").contains(&web) && PathId::root().contains(&web) && web.contains(&web));
        assert!(!web.contains(&p("/prod")) && !p("/pro").contains(&web));
    }

    #[test]
    fn safe_paths_and_task_ids_round_trip() {
        let web = p("/prod/web.v2");
        assert_eq!(web.safe_path(), "prod_web.v2");
        assert_eq!(PathId::from_safe_path("prod_web.v2").unwrap(), web);
        assert!(PathId::from_safe_path("prod_Web").is_err());
        assert_eq!(web.task_id_prefix(), "prod_web.v2.");
        let uuid = "4f1a9e2c-0b7d-11ee-9c1a-0242ac120002";
        let task = web.task_id(uuid);
        assert_eq!(task, "prod_web.v2.4f1a9e2c-0b7d-11ee-9c1a-0242ac120002");
        assert_eq!(PathId::app_id_of_task(&task), Some(web.clone()));
        assert_eq!(PathId::app_id_of_task(&format!("prod_web.v2.instance-{uuid}._app.1")), Some(web.clone()));
        assert_eq!(PathId::app_id_of_task(&format!("prod_web.v2.marathon-{uuid}")), Some(web));
        assert_eq!(PathId::app_id_of_task("ubuntu.abc123"), Some(p("/ubuntu")));
        assert_eq!(PathId::app_id_of_task("no-dot"), None);
        assert_eq!(PathId::app_id_of_task(".abc"), None);
        assert_eq!(PathId::app_id_of_task("Bad.abc"), None);
        // A task of /prod is not a task of /prod/web and vice versa.
        assert!(!p("/prod/web").task_id("x").starts_with(&p("/prod").task_id_prefix()));
    }

    #[test]
    fn serde_as_a_string() {
        let web = p("prod/web");
        assert_eq!(serde_json::to_string(&web).unwrap(), r#""/prod/web""#);
        assert_eq!(serde_json::from_str::<PathId>(r#""prod/web/""#).unwrap(), web);
        assert!(serde_json::from_str::<PathId>(r#""Prod""#).is_err());
        assert_eq!(format!("{web:?}"), "PathId(/prod/web)");
    }
}
