//! Graceful shutdown: a cancellation token every task of a service watches, triggered by
//! SIGTERM or SIGINT in the binaries and by the harness in tests — or by a failure the
//! service cannot go on from ([`Shutdown::fail`]): a panic, a poisoned lock, storage that no
//! longer writes. A failed service stops the same graceful way (a leader resigns first, so a
//! standby takes over at once) and its binary then exits non-zero for its supervisor to
//! restart it: a fresh process with state reloaded beats one that holds on without acting.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Cloneable; triggering any clone stops the service. [`Shutdown::child`] makes a token for a
/// sub-task that the sub-task may cancel without stopping the parent.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    /// The service's own token (`token` is a child of it in a [`Shutdown::child`]): a
    /// failure anywhere stops the whole service.
    service: CancellationToken,
    /// Why the service failed, if it did (the first reason given is kept).
    failure: Arc<Mutex<Option<String>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let token = CancellationToken::new();
        Self { service: token.clone(), token, failure: Arc::default() }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Stops the service because it cannot go on: logged, remembered for [`Shutdown::failure`]
    /// (the binary's exit status), and a graceful stop begins.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        // Never panic here: this runs inside the panic hook too.
        let mut failure = self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_none() {
            tracing::error!(%reason, "fatal: stopping (a leader resigns first) to be restarted by the supervisor");
            *failure = Some(reason);
        }
        drop(failure);
        self.service.cancel();
    }

    /// Why the service failed, if [`Shutdown::fail`] was called.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A token for a sub-task: cancelled with this one, cancellable on its own. Failing it
    /// fails the service.
    pub fn child(&self) -> Shutdown {
        Shutdown { token: self.token.child_token(), service: self.service.clone(), failure: self.failure.clone() }
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Makes every panic in this process fail the service: the default hook still prints
    /// the panic, then [`Shutdown::fail`] starts the graceful stop. A panic is a bug whose
    /// damage (a half-applied change, a poisoned lock) cannot be known, and tokio would
    /// otherwise just end the panicking task and keep a leader that no longer acts. For the
    /// binaries; in-process test clusters keep the default behaviour.
    pub fn fail_on_panic(&self) {
        let shutdown = self.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let message = panic_message(info.payload());
            if CONTAINED.get() {
                tracing::error!("panic{location}: {message} (contained)");
                return;
            }
            default_hook(info);
            shutdown.fail(format!("panic{location}: {message}"));
        }));
    }
}

thread_local! {
    /// Set while [`contain`] runs a closure on this thread.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into an error instead of a failure of the service.
/// Only for pure code over borrowed state (a decision for one app, a task built from one
/// definition): a panic there says that one input is bad, and the service goes on with the
/// others. Code that changes shared state must not be contained.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = CONTAINED.replace(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.set(outer);
    result.map_err(|payload| panic_message(&*payload))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_stops_the_service_and_keeps_the_first_reason() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        assert!(shutdown.failure().is_none());
        child.fail("storage: no space left on device");
        shutdown.fail("a later reason");
        assert!(shutdown.is_triggered(), "failing a child stops the whole service");
        assert_eq!(shutdown.failure().as_deref(), Some("storage: no space left on device"));
    }

    #[test]
    fn a_contained_panic_is_an_error() {
        let result: Result<(), String> = contain(|| panic!("a bad definition"));
        assert_eq!(result, Err("a bad definition".to_owned()));
        assert_eq!(contain(|| 7), Ok(7));
        assert!(!CONTAINED.get(), "the flag is reset after the panic");
    }
}
