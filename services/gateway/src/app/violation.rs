//! Marathon's error details: a JSON path and what is wrong there.

use serde::Serialize;
use serde_json::{Value, json};

/// One entry of Marathon's `details`: `{"path": "/cpus", "errors": ["got -1.0, expected 0.0 or more"]}`.
///
/// Paths are Marathon's: `/` for the whole app, `/container/docker/image` for fields,
/// `/healthChecks(0)/portIndex` for array elements, `/env(KEY)` for map entries being checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub path: String,
    pub errors: Vec<String>,
}

impl Violation {
    pub fn new(path: impl Into<String>, error: impl Into<String>) -> Self {
        Violation { path: path.into(), errors: vec![error.into()] }
    }
}

/// Marathon's 422 body for a definition that read fine but breaks a rule:
/// `{"message": "Object is not valid", "details": [...]}`.
pub fn invalid_body(violations: &[Violation]) -> Value {
    json!({ "message": "Object is not valid", "details": violations })
}

/// Collects violations in the order found, merging those at the same path.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<Violation>,
}

impl Problems {
    /// Records `error` at `path` (`""` stands for the whole app and is written `/`).
    pub(crate) fn add(&mut self, path: &str, error: impl Into<String>) {
        let path = if path.is_empty() { "/" } else { path };
        let error = error.into();
        match self.list.iter_mut().find(|v| v.path == path) {
            Some(v) if v.errors.contains(&error) => {}
            Some(v) => v.errors.push(error),
            None => self.list.push(Violation::new(path, error)),
        }
    }

    pub(crate) fn into_result(self) -> Result<(), Vec<Violation>> {
        if self.list.is_empty() { Ok(()) } else { Err(self.list) }
    }
}

/// `path/key`: the path of an object's field.
pub(crate) fn field_path(path: &str, key: &str) -> String {
    format!("{path}/{key}")
}

/// `path(i)`: the path of an array's element (or of a map's entry, with its key).
pub(crate) fn item_path(path: &str, index: impl std::fmt::Display) -> String {
    format!("{path}({index})")
}
