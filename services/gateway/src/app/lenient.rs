//! Lenient reading of JSON, the way old Marathon clients need it.
//!
//! Marathon 0.x (Jackson) accepted `"instances": "1"` and `"cpus": ".5"`; scripts from that
//! era still send them. So numbers may be JSON numbers or numeric strings, booleans may be
//! `"true"`/`"false"`, string fields take numbers and booleans as their text, enum names are
//! matched case-insensitively, and `null` is the same as absent. Unknown fields are ignored.
//! Anything else that does not fit is recorded at its path with Play JSON's error keys, which
//! is what Marathon 1.x reports (`error.expected.jsnumber`, `error.path.missing`, ...), and
//! reading carries on so that every problem is reported at once.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::time::Timestamp;
use super::violation::{Problems, field_path, item_path};

pub(crate) const EXPECTED_NUMBER: &str = "error.expected.jsnumber";
pub(crate) const EXPECTED_INT: &str = "error.expected.int";
pub(crate) const EXPECTED_STRING: &str = "error.expected.jsstring";
pub(crate) const EXPECTED_BOOLEAN: &str = "error.expected.jsboolean";
pub(crate) const EXPECTED_ARRAY: &str = "error.expected.jsarray";
pub(crate) const EXPECTED_OBJECT: &str = "error.expected.jsobject";
pub(crate) const EXPECTED_DATE: &str = "error.expected.date.isoformat";
pub(crate) const PATH_MISSING: &str = "error.path.missing";
pub(crate) const UNKNOWN_ENUM: &str = "error.unknown.enum.literal";
pub(crate) const MIN: &str = "error.min";
pub(crate) const MAX: &str = "error.max";
pub(crate) const MIN_LENGTH: &str = "error.minLength";

/// A field's value, `None` when absent or `null`.
pub(crate) fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A number, or a string holding one (`".5"`, `"512"`, `"1e3"`).
pub(crate) fn number(value: &Value) -> Result<f64, &'static str> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite()).ok_or(EXPECTED_NUMBER)
}

/// An integer, or a string holding one; integral floats (`2.0`, `"2.0"`) count as integers.
pub(crate) fn integer(value: &Value) -> Result<i64, &'static str> {
    if let Value::Number(n) = value
        && let Some(i) = n.as_i64()
    {
        return Ok(i);
    }
    if let Value::String(s) = value
        && let Ok(i) = s.trim().parse::<i64>()
    {
        return Ok(i);
    }
    let n = number(value)?;
    if n.fract() == 0.0 && n.abs() < 9.0e15 { Ok(n as i64) } else { Err(EXPECTED_INT) }
}

/// An integer within `min..=max` (Marathon's RAML `minimum`/`maximum`).
fn bounded(value: &Value, min: i64, max: i64) -> Result<i64, &'static str> {
    match integer(value)? {
        i if i < min => Err(MIN),
        i if i > max => Err(MAX),
        i => Ok(i),
    }
}

/// A string; numbers and booleans stand for their text.
pub(crate) fn string(value: &Value) -> Result<String, &'static str> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(EXPECTED_STRING),
    }
}

/// A boolean, or the string `"true"`/`"false"` in any case.
pub(crate) fn boolean(value: &Value) -> Result<bool, &'static str> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(EXPECTED_BOOLEAN),
    }
}

/// Reads fields of JSON objects, recording what does not fit into `problems`.
///
/// Every reader takes the object, the object's path and the field's key, and returns the
/// field's value, its default, or `None`, having recorded a problem if the field was there
/// but unreadable.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub(crate) problems: Problems,
}

impl Reader {
    pub(crate) fn problem(&mut self, path: &str, error: impl Into<String>) {
        self.problems.add(path, error);
    }

    fn read<'v, T>(
        &mut self,
        obj: &'v Map<String, Value>,
        path: &str,
        key: &str,
        parse: impl FnOnce(&'v Value) -> Result<T, &'static str>,
    ) -> Option<T> {
        let value = get(obj, key)?;
        parse(value).map_err(|error| self.problem(&field_path(path, key), error)).ok()
    }

    pub(crate) fn f64(&mut self, obj: &Map<String, Value>, path: &str, key: &str, default: f64) -> f64 {
        self.read(obj, path, key, number).unwrap_or(default)
    }

    /// A 32-bit integer, as Marathon's fields are.
    pub(crate) fn opt_i32(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<i64> {
        self.read(obj, path, key, |v| {
            let i = integer(v)?;
            if i32::try_from(i).is_ok() { Ok(i) } else { Err(EXPECTED_INT) }
        })
    }

    pub(crate) fn i32(&mut self, obj: &Map<String, Value>, path: &str, key: &str, default: i64) -> i64 {
        self.opt_i32(obj, path, key).unwrap_or(default)
    }

    /// A 64-bit integer (durations in seconds).
    pub(crate) fn opt_i64(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<i64> {
        self.read(obj, path, key, integer)
    }

    pub(crate) fn i64(&mut self, obj: &Map<String, Value>, path: &str, key: &str, default: i64) -> i64 {
        self.opt_i64(obj, path, key).unwrap_or(default)
    }

    /// An integer within `min..=max`, given as a value (an array element) at `path`.
    pub(crate) fn bounded(&mut self, value: &Value, path: &str, min: i64, max: i64) -> Option<i64> {
        bounded(value, min, max).map_err(|error| self.problem(path, error)).ok()
    }

    /// An integer within `min..=max` (Marathon's RAML `minimum`/`maximum`).
    pub(crate) fn opt_bounded(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        self.read(obj, path, key, |v| bounded(v, min, max))
    }

    /// A non-negative 32-bit integer (counts and durations of checks).
    pub(crate) fn u32(&mut self, obj: &Map<String, Value>, path: &str, key: &str, default: u32) -> u32 {
        self.opt_bounded(obj, path, key, 0, i64::from(i32::MAX)).map_or(default, |i| i as u32)
    }

    /// A port number, 0 to 65535.
    pub(crate) fn opt_port(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<u16> {
        self.opt_bounded(obj, path, key, 0, 65_535).map(|i| i as u16)
    }

    pub(crate) fn bool(&mut self, obj: &Map<String, Value>, path: &str, key: &str, default: bool) -> bool {
        self.read(obj, path, key, boolean).unwrap_or(default)
    }

    pub(crate) fn string(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        self.read(obj, path, key, string)
    }

    /// A string that must be there and must not be empty.
    pub(crate) fn required_string(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        if get(obj, key).is_none() {
            self.problem(&field_path(path, key), PATH_MISSING);
            return None;
        }
        let s = self.string(obj, path, key)?;
        if s.is_empty() {
            self.problem(&field_path(path, key), MIN_LENGTH);
            return None;
        }
        Some(s)
    }

    pub(crate) fn timestamp(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<Timestamp> {
        self.read(obj, path, key, |v| match v {
            Value::String(s) => Timestamp::parse(s).map_err(|_| EXPECTED_DATE),
            _ => Err(EXPECTED_DATE),
        })
    }

    /// An enum, by name in any case; `names` lists `(canonical name, value)`.
    pub(crate) fn enumeration<T: Copy>(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        names: &[(&str, T)],
    ) -> Option<T> {
        self.read(obj, path, key, |v| {
            let name = match v {
                Value::String(s) => s.trim(),
                _ => return Err(UNKNOWN_ENUM),
            };
            names.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, t)| *t).ok_or(UNKNOWN_ENUM)
        })
    }

    pub(crate) fn array<'v>(&mut self, obj: &'v Map<String, Value>, path: &str, key: &str) -> Option<&'v [Value]> {
        self.read(obj, path, key, |v| v.as_array().map(Vec::as_slice).ok_or(EXPECTED_ARRAY))
    }

    pub(crate) fn object<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Map<String, Value>> {
        self.read(obj, path, key, |v| v.as_object().ok_or(EXPECTED_OBJECT))
    }

    /// An array of strings; an unreadable element is recorded and skipped.
    pub(crate) fn strings(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<Vec<String>> {
        let items = self.array(obj, path, key)?;
        let path = field_path(path, key);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match string(item) {
                Ok(s) => out.push(s),
                Err(error) => self.problem(&item_path(&path, i), error),
            }
        }
        Some(out)
    }

    /// An object of strings (labels); an unreadable value is recorded and skipped.
    pub(crate) fn string_map(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.object(obj, path, key) else { return out };
        let path = field_path(path, key);
        for (name, value) in entries {
            if value.is_null() {
                continue;
            }
            match string(value) {
                Ok(s) => {
                    out.insert(name.clone(), s);
                }
                Err(error) => self.problem(&field_path(&path, name), error),
            }
        }
        out
    }

    /// The elements of an array field that are objects, each with its path; others are
    /// recorded as problems.
    pub(crate) fn objects<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<Vec<(&'v Map<String, Value>, String)>> {
        let items = self.array(obj, path, key)?;
        let path = field_path(path, key);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_object() {
                Some(o) => out.push((o, item_path(&path, i))),
                None => self.problem(&item_path(&path, i), EXPECTED_OBJECT),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_may_be_strings() {
        assert_eq!(number(&json!(".3")), Ok(0.3));
        assert_eq!(number(&json!(" 512 ")), Ok(512.0));
        assert_eq!(number(&json!(1e3)), Ok(1000.0));
        for bad in [json!("abc"), json!(""), json!("NaN"), json!("inf"), json!(true), json!([1])] {
            assert_eq!(number(&bad), Err(EXPECTED_NUMBER), "{bad}");
        }
        assert_eq!(integer(&json!("1")), Ok(1));
        assert_eq!(integer(&json!(2.0)), Ok(2));
        assert_eq!(integer(&json!("3.0")), Ok(3));
        assert_eq!(integer(&json!(1.5)), Err(EXPECTED_INT));
        assert_eq!(integer(&json!("x")), Err(EXPECTED_NUMBER));
    }

    #[test]
    fn scalars_read_as_strings_and_booleans_as_text() {
        assert_eq!(string(&json!(8080)), Ok("8080".to_owned()));
        assert_eq!(string(&json!({})), Err(EXPECTED_STRING));
        assert_eq!(boolean(&json!("TRUE")), Ok(true));
        assert_eq!(boolean(&json!("no")), Err(EXPECTED_BOOLEAN));
    }

    #[test]
    fn reader_records_every_problem_at_its_path() {
        let obj = json!({"a": "x", "b": 70000, "c": [1, {}], "d": null, "e": "oldest_first", "f": "?"});
        let obj = obj.as_object().unwrap();
        let mut r = Reader::default();
        assert_eq!(r.f64(obj, "", "a", 1.0), 1.0);
        assert_eq!(r.opt_port(obj, "/x", "b"), None);
        assert_eq!(r.strings(obj, "", "c"), Some(vec!["1".to_owned()]));
        assert_eq!(r.f64(obj, "", "d", 7.0), 7.0);
        let names = [("YOUNGEST_FIRST", 1), ("OLDEST_FIRST", 2)];
        assert_eq!(r.enumeration(obj, "", "e", &names), Some(2));
        assert_eq!(r.enumeration(obj, "", "f", &names), None);
        assert_eq!(r.required_string(obj, "", "missing"), None);
        let problems = r.problems.into_result().unwrap_err();
        let pairs: Vec<_> = problems.iter().map(|v| (v.path.as_str(), v.errors[0].as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("/a", EXPECTED_NUMBER),
                ("/x/b", MAX),
                ("/c(1)", EXPECTED_STRING),
                ("/f", UNKNOWN_ENUM),
                ("/missing", PATH_MISSING)
            ]
        );
    }
}
