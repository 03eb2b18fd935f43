//! Keeping only the end of a task's output.
//!
//! Logs and exec output arrive as a stream of chunks of unknown total size; callers want at
//! most the last N bytes. Holding the whole stream first would let one chatty task grow the
//! agent's memory without bound.

use bytes::{Buf, Bytes, BytesMut};

/// The last `limit` bytes of everything pushed into it.
#[derive(Debug)]
pub(crate) struct TailBuffer {
    limit: usize,
    buf: BytesMut,
}

impl TailBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        TailBuffer { limit, buf: BytesMut::new() }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        // Trimming at twice the limit keeps the copying amortised.
        if self.buf.len() > self.limit.saturating_mul(2) {
            self.trim();
        }
    }

    /// Bytes held so far (never fewer than the stream's last `limit` bytes).
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn finish(mut self) -> Bytes {
        self.trim();
        self.buf.freeze()
    }

    fn trim(&mut self) {
        if self.buf.len() > self.limit {
            self.buf.advance(self.buf.len() - self.limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let mut tail = TailBuffer::new(5);
        for chunk in ["hello ", "wide ", "world"] {
            tail.push(chunk.as_bytes());
        }
        assert_eq!(tail.finish(), Bytes::from_static(b"world"));
        let mut all = TailBuffer::new(usize::MAX);
        all.push(b"abc");
        assert_eq!(all.finish(), Bytes::from_static(b"abc"));
        assert_eq!(TailBuffer::new(0).finish(), Bytes::new());
    }
}
