//! Mesos' sandbox files API on the agent's port: `/files/browse`, `/files/read` and
//! `/files/download`, for the files of task sandboxes and nothing else on the machine.
//! A path is resolved (`..`, symlinks) before it is checked, so neither a `..` nor a
//! symlink a task left in its sandbox leads out of it — into the machine, or into another
//! task's sandbox.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

/// The most `/files/read` returns at once (Mesos pages larger files with `offset`).
pub const MAX_READ_BYTES: u64 = 4 << 20;

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

#[derive(Deserialize)]
struct ReadQuery {
    path: String,
    /// Where to start; `-1` asks only for the file's length (Mesos' way to tail a file).
    offset: Option<i64>,
    length: Option<u64>,
}

/// The routes, serving files under `sandboxes` (the agent's sandbox root).
pub fn routes(sandboxes: PathBuf) -> Router {
    Router::new()
        .route("/files/browse", get(browse))
        .route("/files/read", get(read))
        .route("/files/download", get(download))
        .with_state(Arc::new(sandboxes))
}

type Refusal = (StatusCode, axum::Json<serde_json::Value>);

fn refuse(code: StatusCode, message: String) -> Refusal {
    (code, axum::Json(json!({ "message": message })))
}

/// `requested`, resolved, if it lies inside the task sandbox it names: the first component
/// below `root` (the sandboxes directory) says which sandbox, and the resolved path must stay
/// in that one.
fn confine(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let path = Path::new(requested);
    if !path.is_absolute() {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("{requested:?}: an absolute path, as /state gives it")));
    }
    let not_found = || refuse(StatusCode::NOT_FOUND, format!("{requested}: no such file in a task sandbox"));
    let outside = || refuse(StatusCode::FORBIDDEN, format!("{requested}: outside the task sandboxes"));
    let canonical_root = root.canonicalize().map_err(|_| not_found())?;
    // As /state names it, or through the root's resolved path.
    let below = path.strip_prefix(root).or_else(|_| path.strip_prefix(&canonical_root)).map_err(|_| outside())?;
    let sandbox = match below.components().next() {
        Some(std::path::Component::Normal(name)) => canonical_root.join(name),
        _ => return Err(outside()),
    };
    let resolved = path.canonicalize().map_err(|_| not_found())?;
    if !resolved.starts_with(&sandbox) {
        return Err(refuse(StatusCode::FORBIDDEN, format!("{requested}: outside its task's sandbox")));
    }
    Ok(resolved)
}

fn io_error(path: &Path, error: std::io::Error) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {error}", path.display()))
}

/// `GET /files/browse?path=DIR`: the directory's entries, as Mesos lists them.
async fn browse(State(root): State<Arc<PathBuf>>, Query(query): Query<PathQuery>) -> Result<Response, Refusal> {
    blocking(move || list(&root, &query.path)).await
}

/// File system work off the async workers (a slow disk must not stall the agent's port).
async fn blocking(work: impl FnOnce() -> Result<Response, Refusal> + Send + 'static) -> Result<Response, Refusal> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("reading failed: {error}"))))
}

fn list(root: &Path, requested: &str) -> Result<Response, Refusal> {
    let dir = confine(root, requested)?;
    if !dir.is_dir() {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("{requested}: not a directory")));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
        let entry = entry.map_err(|e| io_error(&dir, e))?;
        let Ok(metadata) = entry.path().symlink_metadata() else { continue };
        // Named as asked (not resolved), so the caller can go on browsing from it.
        let shown = Path::new(requested).join(entry.file_name());
        entries.push(json!({
            "path": shown.display().to_string(),
            "size": metadata.len(),
            "mode": mode_string(&metadata),
            "mtime": metadata.mtime(),
            "nlink": metadata.nlink(),
            "uid": metadata.uid().to_string(),
            "gid": metadata.gid().to_string(),
        }));
    }
    entries.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(axum::Json(entries).into_response())
}

/// `ls -l`'s mode column (`-rw-r--r--`, `drwxr-xr-x`), as Mesos shows it.
fn mode_string(metadata: &std::fs::Metadata) -> String {
    let kind = if metadata.is_dir() {
        'd'
    } else if metadata.file_type().is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = metadata.mode();
    let bits: String = (0..9).map(|i| if mode & (0o400 >> i) != 0 { ['r', 'w', 'x'][i % 3] } else { '-' }).collect();
    format!("{kind}{bits}")
}

/// `GET /files/read?path=FILE&offset=N&length=M`: `{"data", "offset"}`; `offset=-1`: only
/// the file's length, as the offset to read from next.
async fn read(State(root): State<Arc<PathBuf>>, Query(query): Query<ReadQuery>) -> Result<Response, Refusal> {
    blocking(move || read_part(&root, &query)).await
}

fn read_part(root: &Path, query: &ReadQuery) -> Result<Response, Refusal> {
    let file_path = confine(root, &query.path)?;
    if !file_path.is_file() {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("{}: not a file", query.path)));
    }
    let mut file = std::fs::File::open(&file_path).map_err(|e| io_error(&file_path, e))?;
    let size = file.metadata().map_err(|e| io_error(&file_path, e))?.len();
    let offset = match query.offset {
        None => 0,
        Some(-1) => return Ok(axum::Json(json!({ "data": "", "offset": size })).into_response()),
        Some(offset) if offset < 0 => {
            return Err(refuse(StatusCode::BAD_REQUEST, format!("offset {offset}: 0 or more, or -1")));
        }
        Some(offset) => (offset as u64).min(size),
    };
    let length = query.length.unwrap_or(MAX_READ_BYTES).min(MAX_READ_BYTES);
    file.seek(SeekFrom::Start(offset)).map_err(|e| io_error(&file_path, e))?;
    let mut data = Vec::new();
    file.take(length).read_to_end(&mut data).map_err(|e| io_error(&file_path, e))?;
    Ok(axum::Json(json!({ "data": text_of_same_length(&data), "offset": offset })).into_response())
}

/// `data` as text whose UTF-8 length is the number of bytes it stands for, so a client
/// following a file reads on from `offset + data's length`: a character cut at the end is
/// left for the next read, and each byte that is not UTF-8 becomes `?` (a replacement
/// character would take three bytes).
fn text_of_same_length(data: &[u8]) -> String {
    let mut text = String::with_capacity(data.len());
    let mut rest = data;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                break;
            }
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match error.error_len() {
                    Some(bad) => {
                        text.extend(std::iter::repeat_n('?', bad));
                        rest = &after[bad..];
                    }
                    // An incomplete character at the end.
                    None => break,
                }
            }
        }
    }
    text
}

/// `GET /files/download?path=FILE`: the whole file.
async fn download(State(root): State<Arc<PathBuf>>, Query(query): Query<PathQuery>) -> Result<Response, Refusal> {
    let file_path = confine(&root, &query.path)?;
    if !file_path.is_file() {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("{}: not a file", query.path)));
    }
    let file = tokio::fs::File::open(&file_path).await.map_err(|e| io_error(&file_path, e))?;
    let name = file_path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", name.replace('"', ""))),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_text_is_as_long_as_the_bytes_it_stands_for() {
        assert_eq!(text_of_same_length(b"plain"), "plain");
        assert_eq!(text_of_same_length("naïve".as_bytes()), "naïve");
        assert_eq!(text_of_same_length(b"a\xffb\xfe"), "a?b?");
        // "é" cut after its first byte: left for the next read.
        assert_eq!(text_of_same_length(b"caf\xc3"), "caf");
    }

    #[test]
    fn a_path_stays_in_the_sandbox_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sandboxes");
        for sandbox in ["a", "b"] {
            std::fs::create_dir_all(root.join(sandbox)).unwrap();
        }
        std::fs::write(root.join("a/secret"), "a's").unwrap();
        std::fs::write(root.join("b/own"), "b's").unwrap();
        std::os::unix::fs::symlink("../a/secret", root.join("b/neighbour")).unwrap();
        std::os::unix::fs::symlink("own", root.join("b/alias")).unwrap();
        let at = |path: &str| root.join(path).display().to_string();

        assert_eq!(confine(&root, &at("b/own")).unwrap(), root.canonicalize().unwrap().join("b/own"));
        assert!(confine(&root, &at("b/alias")).is_ok(), "a link within the sandbox");
        assert!(confine(&root, &at("b")).is_ok(), "the sandbox itself");
        for (path, status) in [
            (at("b/neighbour"), StatusCode::FORBIDDEN),
            (at("b/../a/secret"), StatusCode::FORBIDDEN),
            (root.display().to_string(), StatusCode::FORBIDDEN),
            (at(".."), StatusCode::FORBIDDEN),
            ("/etc/passwd".to_owned(), StatusCode::FORBIDDEN),
            (at("b/missing"), StatusCode::NOT_FOUND),
            ("relative".to_owned(), StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(confine(&root, &path).unwrap_err().0, status, "{path}");
        }
    }
}
