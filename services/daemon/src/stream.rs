//! Stream helpers for gRPC server streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

/// A stream that runs a callback when it is dropped — e.g. when the client of a server
/// stream disconnects and tonic drops the response stream.
pub struct OnDrop<S> {
    inner: S,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl<S> OnDrop<S> {
    pub fn new(inner: S, on_drop: impl FnOnce() + Send + 'static) -> Self {
        Self { inner, on_drop: Some(Box::new(on_drop)) }
    }
}

impl<S: Stream + Unpin> Stream for OnDrop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<S> Drop for OnDrop<S> {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}
