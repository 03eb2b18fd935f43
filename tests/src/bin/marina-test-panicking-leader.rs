//! Test fixture: a leader whose term panics. It stands for leadership with the candidacy loop
//! masters and gateways run, under the same panic handling as every service binary
//! (`Shutdown::fail_on_panic`, `cli::until_stopped`); it prints `leading <epoch>` once it
//! leads, and once PANIC_FILE exists (the test creates it when a standby waits) a task of
//! its term panics while holding the term's state lock, as a bug in a leader would. It must
//! resign at once — a standby leads without waiting for this candidate's session to expire
//! — and exit non-zero.
//!
//! Usage: marina-test-panicking-leader COORD_URL ELECTION_DIR NAME TTL_MS PANIC_FILE TLS_DIR
//! (TLS_DIR: where the cluster's CA and an operator certificate are)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::{Candidacy, CoordClient, CoordUrl, Term};
use marina_daemon::Shutdown;
use tokio::sync::{Notify, watch};

/// A term with state behind a lock, like the master's and the gateway's.
struct PanickingTerm {
    state: Arc<Mutex<u64>>,
}

impl Term for PanickingTerm {
    fn end(&self) {}
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dir, name, ttl_ms, panic_file, tls_dir] = args.as_slice() else {
        eprintln!("usage: marina-test-panicking-leader COORD_URL ELECTION_DIR NAME TTL_MS PANIC_FILE TLS_DIR");
        return std::process::ExitCode::from(2);
    };
    let (Ok(url), Ok(ttl_ms)) = (url.parse::<CoordUrl>(), ttl_ms.parse::<u64>()) else {
        eprintln!("marina-test-panicking-leader: bad arguments");
        return std::process::ExitCode::from(2);
    };
    let shutdown = Shutdown::new();
    shutdown.fail_on_panic();
    let candidacy = Candidacy {
        dir: dir.clone(),
        data: name.clone().into_bytes(),
        session_ttl: Duration::from_millis(ttl_ms),
        // None: the session outlives this process by its whole TTL, so only a resignation
        // hands leadership over quickly.
        disconnect_grace: Duration::ZERO,
    };
    let panic_file = std::path::PathBuf::from(panic_file);
    let start = move |epoch: u64, _fence, _deposed| {
        let panic_file = panic_file.clone();
        async move {
            println!("leading {epoch}");
            let term = Arc::new(PanickingTerm { state: Arc::new(Mutex::new(epoch)) });
            let state = term.state.clone();
            tokio::spawn(async move {
                while !panic_file.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _held = state.lock();
                panic!("a bug in the leader's term");
            });
            Ok(term)
        }
    };
    let current = watch::channel(None).0;
    let running = tokio::spawn(marina_coord_client::run_candidacy(
        CoordClient::with_tls(&url, Some(marina_tests::tls::operator_in(std::path::Path::new(tls_dir)))),
        candidacy,
        start,
        current,
        Arc::new(Notify::new()),
        shutdown.token(),
    ));
    let result =
        marina_daemon::cli::until_stopped(&shutdown, async move { running.await.map_err(std::io::Error::other) }).await;
    marina_daemon::cli::exit("marina-test-panicking-leader", result)
}
