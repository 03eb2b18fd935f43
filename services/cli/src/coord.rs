//! `marina coord ...`: the quorum's status, its tree, watches and membership.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use marina_coord_client::{ClientOptions, CoordClient, CoordUrl, CreateOptions, EventKind, Node, StatusResponse};
use serde_json::json;

/// The local `marina dev` / README cluster.
const DEFAULT_URL: &str = "coord://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183";

#[derive(Args)]
pub struct CoordArgs {
    /// The quorum: coord://host:port[,host:port...][/root].
    #[arg(long, env = "MARINA_COORD", default_value = DEFAULT_URL)]
    coord: CoordUrl,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    tls: crate::operator::OperatorTls,
    #[command(subcommand)]
    command: CoordCommand,
}

#[derive(Subcommand)]
enum CoordCommand {
    /// Each node: id, address, role, term, applied index.
    Status,
    /// Children of a path.
    Ls {
        path: String,
        /// Read from whichever node answers, without a quorum (may be behind).
        #[arg(long)]
        stale: bool,
    },
    /// A node's data and metadata.
    Get {
        path: String,
        /// Read from whichever node answers, without a quorum (may be behind).
        #[arg(long)]
        stale: bool,
    },
    /// Sets a node's data, creating it if missing.
    Set {
        path: String,
        value: String,
        /// Only if the node is at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Creates a node. An ephemeral node lives as long as this command runs.
    Create {
        #[arg(long)]
        ephemeral: bool,
        #[arg(long)]
        sequential: bool,
        path: String,
        value: String,
    },
    /// Deletes a node.
    Rm {
        path: String,
        /// Delete everything under it too.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Prints changes to a path (and below it) as they happen.
    Watch {
        path: String,
        #[arg(long)]
        from_revision: Option<u64>,
        /// Only the node itself, not its descendants.
        #[arg(long)]
        exact: bool,
    },
    /// Voters and learners.
    Members,
    /// Adds a node as a learner (it replicates but does not vote), optionally promoting it.
    AddMember {
        id: u64,
        address: String,
        #[arg(long)]
        promote: bool,
    },
    /// Makes a learner a voter.
    PromoteMember { id: u64 },
    /// Removes a voter or learner.
    RemoveMember { id: u64 },
}

pub async fn run(args: CoordArgs) -> anyhow::Result<()> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        retry_for: Duration::from_secs(5),
        tls: args.tls.load()?,
    };
    let client = CoordClient::with_options(&args.coord, options);
    let json = args.json;
    match args.command {
        CoordCommand::Status => status(&client, json).await,
        CoordCommand::Ls { path, stale } => {
            let listing = client.list_at(&path, stale).await?;
            if json {
                println!("{}", json!({ "path": path, "revision": listing.revision, "children": listing.children }));
            } else {
                for child in listing.children {
                    println!("{child}");
                }
            }
            Ok(())
        }
        CoordCommand::Get { path, stale } => match client.get_at(&path, stale).await?.0 {
            Some(node) => {
                print_node(&node, json);
                Ok(())
            }
            None => bail!("{path}: no such node"),
        },
        CoordCommand::Set { path, value, version } => {
            let node = match version {
                Some(version) => client.set(&path, value.into_bytes(), Some(version)).await?,
                None => client.put(&path, value.into_bytes()).await?,
            };
            print_node(&node, json);
            Ok(())
        }
        CoordCommand::Create { ephemeral, sequential, path, value } => {
            // Listening for Ctrl-C from before the node exists: a SIGINT that came between
            // its creation and a later listener would kill the command with the session
            // unclosed, leaving the node for the TTL.
            let mut interrupt = interrupt_listener()?;
            let session = if ephemeral {
                Some(client.create_session(Duration::from_secs(10), Duration::from_secs(1)).await?)
            } else {
                None
            };
            let options = CreateOptions { session: session.as_ref().map(|s| s.id()), sequential };
            let node = client.create(&path, value.into_bytes(), options).await?;
            print_node(&node, json);
            if let Some(session) = session {
                eprintln!("holding session {} for the ephemeral node; Ctrl-C releases it", session.id());
                tokio::select! {
                    _ = interrupt.recv() => {}
                    () = session.lost() => bail!("session {} was lost", session.id()),
                }
                session.close().await?;
            }
            Ok(())
        }
        CoordCommand::Rm { path, recursive } => {
            let deleted =
                if recursive { client.delete_recursive(&path).await? } else { client.delete(&path, None).await? };
            if json {
                println!("{}", json!({ "path": path, "deleted": deleted }));
            } else {
                println!("deleted {deleted} node(s)");
            }
            Ok(())
        }
        CoordCommand::Watch { path, from_revision, exact } => {
            let mut interrupt = interrupt_listener()?;
            let mut watch = client.watch(&path, !exact, from_revision.unwrap_or(0)).await?;
            eprintln!("watching {path} (established at revision {})", watch.established_at);
            loop {
                let change = tokio::select! {
                    change = watch.next() => change,
                    _ = interrupt.recv() => return Ok(()),
                };
                let Some(change) = change else { return Ok(()) };
                let change = change?;
                for event in change.events {
                    let kind = match event.kind {
                        EventKind::Put => "PUT",
                        EventKind::Delete => "DELETE",
                    };
                    if json {
                        println!(
                            "{}",
                            json!({ "revision": change.revision, "type": kind, "node": node_json(&event.node) })
                        );
                    } else {
                        println!(
                            "{} {kind} {} {}",
                            change.revision,
                            event.node.path,
                            String::from_utf8_lossy(&event.node.data)
                        );
                    }
                }
            }
        }
        CoordCommand::Members => {
            let status = any_status(&client).await?;
            print_members(&status.members, json);
            Ok(())
        }
        CoordCommand::AddMember { id, address, promote } => {
            let mut members = client.add_learner(id, &address).await?;
            if promote {
                members = client.promote_learner(id).await?;
            }
            print_members(&members, json);
            Ok(())
        }
        CoordCommand::PromoteMember { id } => {
            print_members(&client.promote_learner(id).await?, json);
            Ok(())
        }
        CoordCommand::RemoveMember { id } => {
            print_members(&client.remove_member(id).await?, json);
            Ok(())
        }
    }
}

/// The first status any endpoint gives.
async fn any_status(client: &CoordClient) -> anyhow::Result<StatusResponse> {
    let mut last_error = None;
    for endpoint in client.endpoints() {
        match client.node_status(&endpoint).await {
            Ok(status) => return Ok(status),
            Err(error) => last_error = Some(format!("{endpoint}: {error}")),
        }
    }
    bail!("no coord endpoint answered ({})", last_error.unwrap_or_default())
}

async fn status(client: &CoordClient, json: bool) -> anyhow::Result<()> {
    let first = any_status(client).await?;
    let mut rows = Vec::new();
    for member in &first.members {
        let row = match client.node_status(&member.address).await {
            Ok(status) => json!({
                "id": status.id,
                "address": status.address,
                "role": status.role,
                "term": status.term,
                "applied_index": status.applied_index,
                "last_log_index": status.last_log_index,
                "leader_id": status.leader_id,
                "revision": status.revision,
                "reachable": true,
            }),
            Err(error) => json!({
                "id": member.id,
                "address": member.address,
                "role": "unreachable",
                "reachable": false,
                "error": error.to_string(),
            }),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).context("rendering status")?);
        return Ok(());
    }
    println!("{:<4} {:<22} {:<11} {:>6} {:>10} {:>10}", "ID", "ADDRESS", "ROLE", "TERM", "APPLIED", "REVISION");
    for row in rows {
        let field = |key: &str| row.get(key).map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default();
        println!(
            "{:<4} {:<22} {:<11} {:>6} {:>10} {:>10}",
            field("id"),
            field("address"),
            field("role"),
            field("term"),
            field("applied_index"),
            field("revision")
        );
    }
    Ok(())
}

fn node_json(node: &Node) -> serde_json::Value {
    json!({
        "path": node.path,
        "data": String::from_utf8_lossy(&node.data),
        "version": node.version,
        "create_revision": node.create_revision,
        "mod_revision": node.mod_revision,
        "ephemeral_owner": node.ephemeral_owner,
    })
}

fn print_node(node: &Node, json: bool) {
    if json {
        println!("{}", node_json(node));
        return;
    }
    println!("{}", String::from_utf8_lossy(&node.data));
    eprintln!(
        "path={} version={} create_revision={} mod_revision={}{}",
        node.path,
        node.version,
        node.create_revision,
        node.mod_revision,
        if node.ephemeral_owner != 0 { format!(" ephemeral_owner={}", node.ephemeral_owner) } else { String::new() }
    );
}

fn print_members(members: &[marina_coord_client::Member], json: bool) {
    if json {
        let members: Vec<_> =
            members.iter().map(|m| json!({ "id": m.id, "address": m.address, "kind": m.kind })).collect();
        println!("{}", serde_json::Value::Array(members));
        return;
    }
    println!("{:<4} {:<22} KIND", "ID", "ADDRESS");
    for member in members {
        println!("{:<4} {:<22} {}", member.id, member.address, member.kind);
    }
}

/// Ctrl-C (SIGINT), heard from now on: once listened for, it no longer kills the process.
fn interrupt_listener() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("listening for Ctrl-C")
}
