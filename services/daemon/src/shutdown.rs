//! Graceful shutdown: a cancellation token every task of a service watches, triggered by
//! SIGTERM or SIGINT in the binaries and by the harness in tests.

use tokio_util::sync::CancellationToken;

/// Cloneable; triggering any clone stops the service. [`Shutdown::child`] makes a token for a
/// sub-task that the sub-task may cancel without stopping the parent.
#[derive(Clone, Default, Debug)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }

    pub fn child(&self) -> Shutdown {
        Shutdown(self.0.child_token())
    }

    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT received: shutting down"),
    }
}
