//! The master's candidacy, with the shared coord recipe: lead while the member node stands,
//! step down the instant the session is lost or a fenced write fails, resign (handing over
//! at once) on graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use marina_coord_client::{Election, ElectionState};
use marina_daemon::Shutdown;
use tokio_util::sync::CancellationToken;

use crate::leader::LeaderState;
use crate::{MASTER_ELECTION_DIR, Master, Role};

pub async fn run(master: Arc<Master>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_triggered() {
        let session = match master
            .coord
            .create_session(
                Config::ms(master.config.session_ttl_ms),
                Config::ms(master.config.session_disconnect_grace_ms),
            )
            .await
        {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(%error, "cannot open a coord session; retrying");
                sleep_or_shutdown(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let election =
            match Election::join(&master.coord, &session, MASTER_ELECTION_DIR, master.member.to_bytes()).await {
                Ok(election) => election,
                Err(error) => {
                    tracing::warn!(%error, "cannot join the election; retrying");
                    sleep_or_shutdown(backoff, &shutdown).await;
                    continue;
                }
            };
        backoff = Duration::from_millis(100);
        let mut state = election.state();
        let deposed = CancellationToken::new();
        let mut leadership: Option<Arc<LeaderState>> = None;
        loop {
            let current = *state.borrow_and_update();
            match current {
                ElectionState::Leading { epoch } if leadership.is_none() => {
                    match LeaderState::start(
                        epoch,
                        master.id.clone(),
                        master.member.address.clone(),
                        election.fence().clone(),
                        master.coord.clone(),
                        master.config.clone(),
                        master.metrics.clone(),
                        deposed.clone(),
                    )
                    .await
                    {
                        Ok(leader) => {
                            tracing::info!(epoch, "this master leads");
                            master.metrics.elected.set(1);
                            master.metrics.elections_won.inc();
                            master.role.send_replace(Role::Leading(leader.clone()));
                            leadership = Some(leader);
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot take over (registry unreadable); resigning");
                            let _ = election.resign().await;
                            break;
                        }
                    }
                }
                ElectionState::Leading { .. } => {}
                ElectionState::Standby => step_down(&master, &mut leadership),
                ElectionState::Lost => {
                    step_down(&master, &mut leadership);
                    break;
                }
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { break },
                () = deposed.cancelled() => {
                    step_down(&master, &mut leadership);
                    let _ = election.resign().await;
                    break;
                }
                () = shutdown.cancelled() => {
                    step_down(&master, &mut leadership);
                    // Resigning first hands leadership over without waiting for any timeout.
                    if let Err(error) = election.resign().await {
                        tracing::warn!(%error, "resigning failed; the session's expiry will hand over");
                    }
                    let _ = session.close().await;
                    return;
                }
            }
        }
    }
}

fn step_down(master: &Master, leadership: &mut Option<Arc<LeaderState>>) {
    if let Some(leader) = leadership.take() {
        tracing::warn!(epoch = leader.epoch, "no longer leading: stopping at once");
        leader.end();
        master.metrics.elected.set(0);
    }
    master.role.send_replace(Role::Standby);
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shutdown.cancelled() => {}
    }
}

use crate::config::Config;
