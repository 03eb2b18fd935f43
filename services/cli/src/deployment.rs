//! `marina deployment ...` and `marina queue`: deployments in progress (listed, followed,
//! cancelled) and the apps waiting to launch, with why.

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::follow::{EventFeed, Follow, FollowTiming, deployment_path, follow, waiting_reason};
use crate::gateway::Gateway;
use crate::output::{self, EXIT_CODES, Table, print_json, say};

#[derive(Args)]
pub struct DeploymentArgs {
    #[command(subcommand)]
    command: DeploymentCommand,
}

#[derive(Subcommand)]
enum DeploymentCommand {
    /// Deployments in progress: ID, APPS, STEP, ACTIONS, VERSION.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Follows a deployment in progress to its end, as `marina app deploy` does.
    #[command(after_help = EXIT_CODES)]
    Watch {
        id: String,
        #[command(flatten)]
        timing: FollowTiming,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a deployment: rolls its apps back (a new deployment), or with --force stops it
    /// where it is.
    Cancel {
        id: String,
        /// Stop it where it is, without rolling back.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(gateway: &Gateway, args: DeploymentArgs) -> anyhow::Result<()> {
    match args.command {
        DeploymentCommand::List { json } => list(gateway, json).await,
        DeploymentCommand::Watch { id, timing, json } => watch(gateway, &id, Follow::new(&timing, json)).await,
        DeploymentCommand::Cancel { id, force, json } => cancel(gateway, &id, force, json).await,
    }
}

/// `step 1/2: ScaleApplication /web`.
pub fn step_summary(deployment: &Value) -> String {
    format!("step {}: {}", step_of(deployment), current_actions(deployment))
}

/// `1/2`: the deployment's current step of its steps.
fn step_of(deployment: &Value) -> String {
    format!("{}/{}", output::number(&deployment["currentStep"]), output::number(&deployment["totalSteps"]))
}

/// `ScaleApplication /web, StartApplication /db`; `-` when none.
fn current_actions(deployment: &Value) -> String {
    let actions: Vec<String> = deployment["currentActions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{} {}", output::string(&a["action"]), output::string(&a["app"])))
        .collect();
    if actions.is_empty() { "-".to_owned() } else { actions.join(", ") }
}

async fn list(gateway: &Gateway, json: bool) -> anyhow::Result<()> {
    let deployments = gateway.get("/v2/deployments").await?;
    if json {
        print_json(&deployments);
        return Ok(());
    }
    let mut table = Table::new(&["ID", "APPS", "STEP", "ACTIONS", "VERSION"]);
    for deployment in deployments.as_array().into_iter().flatten() {
        let apps: Vec<String> =
            deployment["affectedApps"].as_array().into_iter().flatten().map(output::string).collect();
        table.row(vec![
            output::string(&deployment["id"]),
            apps.join(","),
            step_of(deployment),
            current_actions(deployment),
            output::string(&deployment["version"]),
        ]);
    }
    table.print_or("no deployment in progress");
    Ok(())
}

async fn watch(gateway: &Gateway, id: &str, options: Follow) -> anyhow::Result<()> {
    let feed = EventFeed::subscribe(gateway).await;
    let deployments = gateway.get("/v2/deployments").await?;
    let Some(deployment) = deployments.as_array().into_iter().flatten().find(|d| d["id"] == id) else {
        anyhow::bail!("no deployment {id} in progress (finished, or never started; see `marina deployment list`)");
    };
    let apps: Vec<String> = deployment["affectedApps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    follow(gateway, Some(feed), id, &apps, &options).await
}

async fn cancel(gateway: &Gateway, id: &str, force: bool, json: bool) -> anyhow::Result<()> {
    let path = format!("{}?force={force}", deployment_path(id));
    let answer = gateway.call(Method::DELETE, &path, None).await.map_err(|error| {
        if error.status() == Some(StatusCode::NOT_FOUND) {
            anyhow::anyhow!("no deployment {id} in progress (see `marina deployment list`): {error}")
        } else {
            error.into()
        }
    })?;
    if json {
        print_json(&answer.body);
        return Ok(());
    }
    match answer.deployment() {
        Some(rollback) => say!(
            "cancelled deployment {id}; rolling its apps back in deployment {rollback} (`marina deployment watch {rollback}`)"
        ),
        None => say!("stopped deployment {id} where it was"),
    }
    Ok(())
}

/// `marina queue`: each app waiting to launch instances, and why.
pub async fn queue(gateway: &Gateway, json: bool) -> anyhow::Result<()> {
    let queue = gateway.get("/v2/queue").await?;
    if json {
        print_json(&queue);
        return Ok(());
    }
    let mut table = Table::new(&["APP", "WAITING", "SINCE", "OFFERS", "WHY"]);
    for entry in queue["queue"].as_array().into_iter().flatten() {
        let summary = &entry["processedOffersSummary"];
        table.row(vec![
            output::string(&entry["app"]["id"]),
            output::number(&entry["count"]),
            output::age(&entry["since"]),
            format!(
                "{} seen, {} unused",
                output::number(&summary["processedOffersCount"]),
                output::number(&summary["unusedOffersCount"])
            ),
            waiting_reason(entry).unwrap_or_else(|| "offers are being matched".to_owned()),
        ]);
    }
    table.print_or("no app is waiting to launch");
    Ok(())
}
