"""Drives a Marina gateway with Marathon's own Python client (PyPI `marathon`), as a user
of Marathon would. Usage: python marathon_client.py http://gateway:port [user:password]
With credentials, first checks that a client without them is refused (401), then logs in
as Marathon's users do (`MarathonClient(url, username=..., password=...)`).
Prints one line per step; exits non-zero on the first failure."""

import sys

from marathon_compat import wait_for  # first: its shim lets the unmodified client import
from marathon import MarathonClient
from marathon.exceptions import MarathonHttpError
from marathon.models import MarathonApp, MarathonHealthCheck


def main(url, credentials=None):
    if credentials:
        user, password = credentials.split(":", 1)
        try:
            MarathonClient(url).list_apps()
            raise AssertionError("a client without credentials was let in")
        except MarathonHttpError as error:
            assert error.status_code == 401, error.status_code
        print("refused without credentials")
        client = MarathonClient(url, username=user, password=password)
    else:
        client = MarathonClient(url)
    info = client.get_info()
    assert info.name == "marathon", info.name
    print("info", info.version)

    app = MarathonApp(
        cmd="sleep 1000",
        cpus=0.1,
        mem=16,
        instances=2,
        labels={"team": "storage"},
        health_checks=[MarathonHealthCheck(protocol="COMMAND", command={"value": "true"}, grace_period_seconds=0, interval_seconds=1)],
    )
    created = client.create_app("py-app", app)
    assert created.id == "/py-app", created.id
    print("created", created.id)

    def running(count):
        current = client.get_app("py-app")
        return current if current.tasks_running == count and not current.deployments else None

    wait_for("2 running", lambda: running(2))
    apps = client.list_apps()
    assert [a.id for a in apps] == ["/py-app"], [a.id for a in apps]
    assert client.list_apps(label="team==storage")
    print("listed", len(apps))

    client.scale_app("py-app", instances=3)
    app = wait_for("3 running", lambda: running(3))
    tasks = client.list_tasks("py-app")
    assert len(tasks) == 3, tasks
    assert all(t.app_id == "/py-app" and t.host for t in tasks)
    print("scaled", len(tasks))

    victim = tasks[0]
    client.kill_task("py-app", victim.id, scale=True)
    wait_for("scaled down by the kill", lambda: running(2))
    print("killed", victim.id)

    before = {t.id for t in client.list_tasks("py-app")}
    client.restart_app("py-app")
    wait_for(
        "every task replaced by the restart",
        lambda: running(2) and not before & {t.id for t in client.list_tasks("py-app")},
    )
    print("restarted")

    deployments = client.list_deployments()
    print("deployments", len(deployments))
    versions = client.list_versions("py-app")
    assert len(versions) >= 3, versions
    print("versions", len(versions))

    client.delete_app("py-app", force=True)
    wait_for("the app to be gone", lambda: not client.list_apps())
    print("deleted")


if __name__ == "__main__":
    main(*sys.argv[1:3])
