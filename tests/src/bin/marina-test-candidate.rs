//! Test fixture: one candidate of the shared election recipe, as its own process so tests
//! can SIGKILL and SIGSTOP it. It prints its state changes on stdout and, while it leads,
//! makes a fenced write every 20 ms under `<dir>/../writes/<name>-<n>`; a fenced write that
//! fails is printed as `deposed`.
//!
//! Usage: marina-test-candidate COORD_URL ELECTION_DIR NAME TTL_MS GRACE_MS TLS_DIR
//! (TLS_DIR: where the cluster's CA and an operator certificate are)

use std::time::Duration;

use marina_coord_client::{CoordClient, CoordUrl, Election, ElectionState, Error, Txn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dir, name, ttl_ms, grace_ms, tls_dir] = args.as_slice() else {
        anyhow::bail!("usage: marina-test-candidate COORD_URL ELECTION_DIR NAME TTL_MS GRACE_MS TLS_DIR");
    };
    let url: CoordUrl = url.parse()?;
    let client = CoordClient::with_tls(&url, Some(marina_tests::tls::operator_in(std::path::Path::new(tls_dir))));
    let session =
        client.create_session(Duration::from_millis(ttl_ms.parse()?), Duration::from_millis(grace_ms.parse()?)).await?;
    let election = Election::join(&client, &session, dir, name.clone()).await?;
    let writes_dir = format!("{}/writes", dir.rsplit_once('/').map_or("", |(parent, _)| parent));
    let mut state = election.state();
    let mut written = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut reported = None;
    loop {
        let current = *state.borrow_and_update();
        if reported != Some(current) {
            reported = Some(current);
            match current {
                ElectionState::Standby => println!("standby"),
                ElectionState::Leading { epoch } => println!("leading {epoch}"),
                ElectionState::Lost => {
                    println!("lost");
                    return Ok(());
                }
            }
        }
        tokio::select! {
            _ = state.changed() => continue,
            _ = ticker.tick() => {}
        }
        if let ElectionState::Leading { epoch } = current {
            written += 1;
            let path = format!("{writes_dir}/{name}-{written:06}");
            match client.fenced(election.fence(), Txn::new().then_put(&path, epoch.to_string())).await {
                Ok(_) => {}
                Err(Error::Deposed { epoch, .. }) => println!("deposed {epoch}"),
                Err(error) => eprintln!("write failed: {error}"),
            }
        }
    }
}
