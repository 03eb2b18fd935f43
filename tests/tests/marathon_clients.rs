//! Marathon's ecosystem, unchanged, against a Marina cluster: Marathon's own Python client
//! reading what integrations read (every embed at once, `lastTaskFailure`, groups scaled
//! with `scaleBy`, a delete without force, an app list holding a containerd app).

use marina_agent::RuntimeChoice;
use marina_tests::MarinaCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathons_python_client_reads_embeds_failures_and_groups() {
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(RuntimeChoice::Process)
        .agent_config(|_, config| config.resources.ports = "24800-24899".into())
        .gateways(1)
        .start()
        .await;
    let steps = [
        "containerd app listed as MESOS",
        "last task failure",
        "group scaled by 2",
        "listed with every embed 3",
        "deleted without force",
    ];
    marina_tests::python::run_script("marathon_integrations.py", &[&cluster.gateway_url(0)], &steps).await;
}
