//! containerd's content store: reading blobs, writing them through the streaming Write
//! protocol, and setting the labels that tell its garbage collector what refers to what.

use std::collections::HashMap;

use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use futures::StreamExt;
use marina_runtime::RuntimeError;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::rpc::{Containerd, backend_error, is_already_exists, is_not_found, rpc_error, unique_id};

/// One write message's payload: well under containerd's 16 MiB message limit.
const WRITE_CHUNK: usize = 1 << 20;
/// Manifests, indexes and configs are read whole; nothing legitimate is this large.
pub(crate) const MAX_METADATA_BLOB: i64 = 8 << 20;

/// The blob's record, or `None` when the namespace does not have it.
pub(crate) async fn info(cd: &Containerd, digest: &str) -> Result<Option<Info>, RuntimeError> {
    match cd.content().info(cd.request(InfoRequest { digest: digest.to_owned() })).await {
        Ok(answer) => Ok(answer.into_inner().info),
        Err(status) if is_not_found(&status) => Ok(None),
        Err(status) => Err(rpc_error("content info", digest, &status)),
    }
}

/// Reads a whole (small) blob: a manifest, an index or an image config.
pub(crate) async fn read(cd: &Containerd, digest: &str) -> Result<Vec<u8>, RuntimeError> {
    let request = ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 };
    let mut stream =
        cd.content().read(cd.request(request)).await.map_err(|s| rpc_error("content read", digest, &s))?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| rpc_error("content read", digest, &s))?;
        data.extend_from_slice(&chunk.data);
        if data.len() as i64 > MAX_METADATA_BLOB {
            return Err(backend_error(format!("content read {digest}: larger than {MAX_METADATA_BLOB} bytes")));
        }
    }
    Ok(data)
}

/// Makes sure the blob `digest` of `size` bytes is in the store with `labels`, writing it
/// from `source` only when it is missing. Concurrent writers of the same blob are fine:
/// each writes under its own ref and the losers' commits answer `AlreadyExists`.
pub(crate) async fn ensure<R>(
    cd: &Containerd,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    source: R,
) -> Result<(), RuntimeError>
where
    R: AsyncRead + Unpin,
{
    if info(cd, digest).await?.is_some() {
        return set_labels(cd, digest, labels).await;
    }
    let reference = unique_id(&format!("marina-write-{digest}"));
    let written = write(cd, &reference, digest, size, labels.clone(), source).await;
    if written.is_err() {
        // Drop the partial data now rather than when the lease goes.
        let _ = cd.content().abort(cd.request(AbortRequest { r#ref: reference })).await;
    }
    match written {
        Ok(()) => Ok(()),
        // Someone else committed it between our stat and our write.
        Err(WriteError::Status(status)) if is_already_exists(&status) => set_labels(cd, digest, labels).await,
        Err(WriteError::Status(status)) => Err(rpc_error("content write", digest, &status)),
        Err(WriteError::Other(message)) => Err(backend_error(format!("content write {digest}: {message}"))),
    }
}

enum WriteError {
    Status(tonic::Status),
    Other(String),
}

impl From<tonic::Status> for WriteError {
    fn from(status: tonic::Status) -> Self {
        WriteError::Status(status)
    }
}

/// containerd's Write protocol: every request is answered once, in order. A `STAT` opens the
/// writer under a ref, `WRITE`s carry data at increasing offsets, and a `COMMIT` checks the
/// size and digest and stores the labels.
async fn write<R>(
    cd: &Containerd,
    reference: &str,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    mut source: R,
) -> Result<(), WriteError>
where
    R: AsyncRead + Unpin,
{
    let (requests, receiver) = mpsc::channel::<WriteContentRequest>(1);
    let outgoing = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    // containerd answers the call only once it has read the first request: queue it first.
    let stat = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_owned(),
        total: size,
        expected: digest.to_owned(),
        ..Default::default()
    };
    requests.send(stat).await.map_err(|_| WriteError::Other("write stream closed".into()))?;
    let mut answers = cd.content().write(cd.request(outgoing)).await?.into_inner();
    let mut next_answer = async || -> Result<WriteContentResponse, WriteError> {
        match answers.next().await {
            Some(answer) => Ok(answer?),
            None => Err(WriteError::Other("containerd closed the write stream early".into())),
        }
    };
    let opened = next_answer().await?;
    if opened.offset != 0 {
        tracing::debug!(%digest, offset = opened.offset, "restarting a partial write from the start");
    }

    let mut offset: i64 = 0;
    let mut buffer = vec![0u8; WRITE_CHUNK];
    loop {
        let read = source.read(&mut buffer).await.map_err(|e| WriteError::Other(format!("reading the source: {e}")))?;
        if read == 0 {
            break;
        }
        let chunk = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.to_owned(),
            offset,
            data: buffer[..read].to_vec(),
            ..Default::default()
        };
        requests.send(chunk).await.map_err(|_| WriteError::Other("write stream closed".into()))?;
        let answer = next_answer().await?;
        offset += read as i64;
        if answer.offset != offset {
            return Err(WriteError::Other(format!(
                "containerd is at offset {} after writing up to {offset}",
                answer.offset
            )));
        }
    }
    if offset != size {
        return Err(WriteError::Other(format!("the source had {offset} bytes, {size} expected")));
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.to_owned(),
        total: size,
        offset,
        expected: digest.to_owned(),
        labels,
        ..Default::default()
    };
    requests.send(commit).await.map_err(|_| WriteError::Other("write stream closed".into()))?;
    let committed = next_answer().await?;
    if !committed.digest.is_empty() && committed.digest != digest {
        return Err(WriteError::Other(format!("containerd committed {} instead", committed.digest)));
    }
    Ok(())
}

/// Sets (adds or replaces) `labels` on a blob, leaving its other labels alone.
pub(crate) async fn set_labels(
    cd: &Containerd,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
    let request = UpdateRequest {
        info: Some(Info { digest: digest.to_owned(), labels, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    cd.content().update(cd.request(request)).await.map_err(|s| rpc_error("content label", digest, &s))?;
    Ok(())
}
