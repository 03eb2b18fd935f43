//! Mesos' sandbox files API on the agent's port: `/files/browse`, `/files/read` and
//! `/files/download`, for the files of task sandboxes and nothing else on the machine.
//! A path is resolved (`..`, symlinks) before it is checked, so neither a `..` nor a
//! symlink a task left in its sandbox leads out of it.

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

/// `requested`, resolved, if it lies inside a task's sandbox (strictly below `root`).
fn confine(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let path = Path::new(requested);
    if !path.is_absolute() {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("{requested:?}: an absolute path, as /state gives it")));
    }
    let not_found = || refuse(StatusCode::NOT_FOUND, format!("{requested}: no such file in a task sandbox"));
    let root = root.canonicalize().map_err(|_| not_found())?;
    let resolved = path.canonicalize().map_err(|_| not_found())?;
    if resolved == root || !resolved.starts_with(&root) {
        return Err(refuse(StatusCode::FORBIDDEN, format!("{requested}: outside the task sandboxes")));
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
    Ok(axum::Json(json!({ "data": String::from_utf8_lossy(&data), "offset": offset })).into_response())
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
