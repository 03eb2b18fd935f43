//! `marina leader` and `marina cluster`: who leads, and what the cluster is made of.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::output::{self, Table, print_json, say};

/// `marina leader`: the leading gateway (`/v2/leader`) and what the answering one says of
/// itself (`/v2/info`).
pub async fn leader(gateway: &Gateway, json: bool) -> anyhow::Result<()> {
    let info = gateway.get("/v2/info").await?;
    let leader = match gateway.get_optional("/v2/leader").await? {
        Some(body) => body["leader"].clone(),
        None => Value::Null,
    };
    let answered = gateway.url().to_owned();
    if json {
        print_json(&json!({
            "leader": leader,
            "answeredBy": answered,
            "answeredByLeader": leader.as_str().is_some_and(|address| answered.ends_with(&format!("//{address}"))),
            "frameworkId": info["frameworkId"],
            "version": info["version"],
            "buildref": info["buildref"],
        }));
        return Ok(());
    }
    match leader.as_str() {
        Some(address) => say!("leader: {address}"),
        None => say!("leader: none elected"),
    }
    // A standby forwards `/v2/info` to the leader too, so which one answered is told by its
    // address, not by `elected`.
    let answered_leads = leader.as_str().is_some_and(|address| answered.ends_with(&format!("//{address}")));
    say!(
        "answered by: {answered} ({}; {}, Marathon API {})",
        if answered_leads { "the leader" } else { "a standby, forwarding to the leader" },
        output::string(&info["buildref"]),
        output::string(&info["version"]),
    );
    if let Some(framework) = info["frameworkId"].as_str() {
        say!("framework id: {framework}");
    }
    Ok(())
}

/// Resources as `cpus 1.5, mem 512 MB, disk 1024 MB, ports 31000-32000`.
fn resources(value: &Value) -> String {
    if !value.is_object() {
        return "-".to_owned();
    }
    let mut parts = vec![
        format!("cpus {}", output::number(&value["cpus"])),
        format!("mem {} MB", output::number(&value["mem"])),
        format!("disk {} MB", output::number(&value["disk"])),
    ];
    if value["gpus"].as_f64().is_some_and(|g| g > 0.0) {
        parts.push(format!("gpus {}", output::number(&value["gpus"])));
    }
    let ranges: Vec<String> = value["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|range| {
            let range = range.as_array()?;
            let (first, last) = (range.first()?, range.last()?);
            Some(if first == last {
                output::number(first)
            } else {
                format!("{}-{}", output::number(first), output::number(last))
            })
        })
        .collect();
    if !ranges.is_empty() {
        parts.push(format!("ports {}", ranges.join(",")));
    }
    parts.join(", ")
}

/// `marina cluster`: masters, gateways and agents (`/v2/cluster`).
pub async fn cluster(gateway: &Gateway, json: bool) -> anyhow::Result<()> {
    let cluster = match gateway.get("/v2/cluster").await {
        Ok(cluster) => cluster,
        Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => anyhow::bail!(
            "the gateway at {} has no /v2/cluster (a Marina gateway older than this CLI?): {error}",
            gateway.url()
        ),
        Err(error) => return Err(error.into()),
    };
    if json {
        print_json(&cluster);
        return Ok(());
    }
    // A section's rows, indented; or why they are unknown (the gateway could not ask coord or
    // the leading master), or `none`.
    let section = |table: &Table, error: &Value| {
        if let Some(why) = error.as_str() {
            say!("  unknown: {why}");
        } else if table.is_empty() {
            say!("  none");
        }
        if !table.is_empty() {
            for line in table.render().lines() {
                say!("  {line}");
            }
        }
    };
    for (title, list, error) in [("masters", "masters", "mastersError"), ("gateways", "gateways", "gatewaysError")] {
        say!("{title}:");
        let mut table = Table::new(&["ID", "ADDRESS", "ROLE"]);
        for member in cluster[list].as_array().into_iter().flatten() {
            table.row(vec![
                output::string(&member["id"]),
                output::string(&member["address"]),
                if member["leader"] == true { "leader".to_owned() } else { "standby".to_owned() },
            ]);
        }
        section(&table, &cluster[error]);
    }
    say!("agents:");
    let mut table = Table::new(&["ID", "HOST", "ADDRESS", "STATUS", "RUNTIMES", "USED", "FREE"]);
    for agent in cluster["agents"].as_array().into_iter().flatten() {
        let runtimes: Vec<String> = agent["runtimes"].as_array().into_iter().flatten().map(output::string).collect();
        table.row(vec![
            output::string(&agent["id"]),
            output::string(&agent["hostname"]),
            output::string(&agent["address"]),
            output::string(&agent["status"]),
            if runtimes.is_empty() { "-".to_owned() } else { runtimes.join(",") },
            resources(&agent["used"]),
            resources(&agent["free"]),
        ]);
    }
    section(&table, &cluster["agentsError"]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_read_as_a_line() {
        let free =
            json!({ "cpus": 1.5, "mem": 512.0, "disk": 1024.0, "gpus": 0, "ports": [[31000, 32000], [8080, 8080]] });
        assert_eq!(resources(&free), "cpus 1.5, mem 512 MB, disk 1024 MB, ports 31000-32000,8080");
        assert_eq!(resources(&Value::Null), "-");
    }
}
