//! What the targets share: turning fuzz input into record files, round-trip checks, scratch
//! directories, and driving the few async storage calls to completion.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use marina_daemon::record::push_framed;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Builds a record file (a coord log segment, the agent's journal) from fuzz input.
///
/// A fuzzer can flip bytes but can hardly forge a CRC-32, so raw input alone would almost
/// never reach the payload decoders behind the framing. The first byte therefore chooses:
/// - even: the rest is the file as is (bad checksums, torn tails, damage anywhere);
/// - odd: the rest is chunks, each a little-endian `u16` length and that many bytes, every
///   one framed with its real CRC by [`push_framed`]; a last chunk shorter than its length
///   is appended raw, as a torn final append would leave it.
pub fn record_file(data: &[u8]) -> Vec<u8> {
    let Some((&mode, mut rest)) = data.split_first() else { return Vec::new() };
    if mode % 2 == 0 {
        return rest.to_vec();
    }
    let mut file = Vec::with_capacity(rest.len() + 8 * (rest.len() / 16 + 1));
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]));
        if len > tail.len() {
            file.extend_from_slice(tail);
            return file;
        }
        push_framed(&mut file, &tail[..len]);
        rest = &tail[len..];
    }
    file.extend_from_slice(rest);
    file
}

/// The input [`record_file`] reads as exactly `payloads`, each framed: for seeding corpora.
pub fn framed_input(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut input = vec![1];
    for payload in payloads {
        let len = u16::try_from(payload.len()).expect("seed payloads fit a u16 length");
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(payload);
    }
    input
}

/// Fuzz input as a sequence of messages: each a kind byte, a little-endian `u16` length and
/// that many bytes (fewer if the input ends first).
pub fn chunks(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&kind, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), rest),
            _ => (0, &[][..]),
        };
        let (body, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((kind, body))
    })
}

/// The input [`chunks`] reads as exactly `messages`: for seeding corpora.
pub fn chunked_input(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut input = Vec::new();
    for (kind, body) in messages {
        input.push(*kind);
        let len = u16::try_from(body.len()).expect("seed messages fit a u16 length");
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(body);
    }
    input
}

/// Re-encoding what postcard decoded must reach a fixed point: the encoding decodes, and
/// decoding and encoding it again gives the same bytes. (Not byte-equality with the input:
/// postcard accepts over-long varints and ignores bytes after the value, so several inputs
/// decode to one value.) Returns the canonical encoding.
pub fn postcard_fixed_point<T: Serialize + DeserializeOwned>(what: &str, value: &T) -> Vec<u8> {
    let once = postcard::to_stdvec(value).unwrap_or_else(|e| panic!("a decoded {what} does not encode: {e}"));
    let decoded: T = postcard::from_bytes(&once).unwrap_or_else(|e| panic!("a re-encoded {what} does not decode: {e}"));
    let twice = postcard::to_stdvec(&decoded).expect("encodes once decoded");
    assert_eq!(once, twice, "a {what} encodes differently once decoded again");
    once
}

/// A fresh directory for a target that works on real files, on tmpfs when there is one
/// (a fuzzer runs the target many thousand times a second); removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    let parent = if shm.is_dir() { shm } else { std::env::temp_dir() };
    tempfile::Builder::new()
        .prefix("marina-fuzz-")
        .tempdir_in(parent)
        .or_else(|_| tempfile::tempdir())
        .expect("a scratch directory")
}

/// Runs a future that does not wait on anything outside itself (the coord log's in-memory
/// reads) to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

/// The input as text, as a server sees bytes it was told are UTF-8 (lossily, so every input
/// reaches the parser).
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_input_reads_back_as_framed_records() {
        let payloads = vec![b"one".to_vec(), Vec::new(), vec![7; 300]];
        let mut expected = Vec::new();
        for payload in &payloads {
            push_framed(&mut expected, payload);
        }
        assert_eq!(record_file(&framed_input(&payloads)), expected);
        let mut torn = framed_input(&payloads);
        torn.extend_from_slice(&[200, 0, 1, 2]);
        let file = record_file(&torn);
        assert_eq!(&file[..expected.len()], expected, "whole chunks framed");
        assert_eq!(&file[expected.len()..], [1, 2], "a short last chunk is appended raw");
        assert_eq!(record_file(&[0, 1, 2, 3]), [1, 2, 3], "even: the file as is");
        assert!(record_file(&[]).is_empty());
    }

    #[test]
    fn chunked_input_reads_back_as_its_messages() {
        let messages = vec![(3, b"abc".to_vec()), (0, Vec::new()), (9, vec![1; 70_000 % 65_536])];
        let read: Vec<(u8, Vec<u8>)> =
            chunks(&chunked_input(&messages)).map(|(kind, body)| (kind, body.to_vec())).collect();
        assert_eq!(read, messages);
        let read: Vec<(u8, &[u8])> = chunks(&[7, 5, 0, 1, 2]).collect();
        assert_eq!(read, [(7, &[1, 2][..])], "a short last message");
        assert_eq!(chunks(&[7, 5]).collect::<Vec<_>>(), [(7, &[][..])]);
    }
}
