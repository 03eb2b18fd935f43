"""What Marathon's ecosystem reads, through Marathon's own Python client (PyPI `marathon`,
unchanged): the app list with every embed at once, an app's lastTaskFailure, groups (its
scale_group sends `scaleBy`), a delete without force, and an app list holding a containerd
app (which the client's models must parse: it rejects any container type but DOCKER and
MESOS, and any field its models do not know).
Usage: python marathon_integrations.py http://gateway:port
Prints one line per step; exits non-zero on the first failure."""

import json
import sys

from marathon_compat import wait_for  # first: its shim lets the unmodified client import
from marathon import MarathonClient
from marathon.models import MarathonApp, MarathonGroup


def main(url):
    client = MarathonClient(url)

    # Marina's former CONTAINERD type, as an old Marina client would still send it: listed
    # as Marathon's MESOS (an image without the Docker daemon), which the models parse.
    raw = {"id": "/on-containerd", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 0,
           "container": {"type": "CONTAINERD", "docker": {"image": "busybox"}}}
    client._do_request("POST", "/v2/apps", data=json.dumps(raw))
    stored = client.get_app("on-containerd")
    assert stored.container.type == "MESOS", stored.container.type
    print("containerd app listed as", stored.container.type)

    failing = MarathonApp(cmd="echo boom >&2; exit 3", cpus=0.1, mem=16, instances=1)
    client.create_app("failing", failing)
    failure = wait_for(
        "the last task failure",
        lambda: client.get_app("failing", embed_last_task_failure=True).last_task_failure,
    )
    assert failure.app_id == "/failing" and failure.state == "TASK_FAILED", failure
    assert failure.task_id and failure.host and failure.version, failure
    print("last task failure", failure.message)
    client.scale_app("failing", instances=0)

    group = MarathonGroup(
        id="/grp",
        apps=[MarathonApp(id="/grp/web", cmd="sleep 1000", cpus=0.1, mem=16, instances=1)],
    )
    client.create_group(group)

    def web_running(count):
        app = client.get_app("grp/web", embed_tasks=True, embed_counts=True)
        return app if app.tasks_running == count and not app.deployments else None

    wait_for("the group's app running", lambda: web_running(1))
    client.scale_group("grp", 2)
    wait_for("the group scaled by 2", lambda: web_running(2))
    print("group scaled by 2")

    apps = client.list_apps(
        embed_tasks=True, embed_counts=True, embed_deployments=True, embed_readiness=True,
        embed_last_task_failure=True, embed_failures=True, embed_task_stats=True,
    )
    ids = sorted(app.id for app in apps)
    assert ids == ["/failing", "/grp/web", "/on-containerd"], ids
    web = next(app for app in apps if app.id == "/grp/web")
    assert len(web.tasks) == 2 and all(task.host for task in web.tasks), web.tasks
    failing = next(app for app in apps if app.id == "/failing")
    assert failing.last_task_failure is not None, "the failure is embedded"
    print("listed with every embed", len(apps))

    # The client sends force=false; with no deployment in the way, the app goes.
    client.delete_app("failing")
    wait_for("the app to be gone", lambda: "/failing" not in [a.id for a in client.list_apps()])
    print("deleted without force")


if __name__ == "__main__":
    main(sys.argv[1])
