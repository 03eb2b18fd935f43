"""Drives Marina's web UI in a real headless Chromium (Debian's /usr/bin/chromium, through
/usr/bin/chromedriver; Selenium Manager is never asked to download anything), against a
real cluster that tests/tests/ui_browser.rs starts.

Usage:
  ui_browser.py journey URL --master ADDR --shots DIR
      the whole journey of an app through the UI at URL (the leading gateway);
  ui_browser.py guarded URL --leader URL --user U --password P --shots DIR
      a gateway with credentials, through its standby at URL: refused without them, then
      the list, a new app, its output, events and the cluster page, signed in.

Prints `ok: STEP` after each step. On a failing step: saves a screenshot as
DIR/STEP.png (and the page's HTML and the browser's console next to it), prints their
paths, exits 1. Waits only on conditions (WebDriverWait), never for fixed times. With
MARINA_UI_SCREENSHOTS=DIR set, also saves the app and cluster pages as DIR/ui-app.png and
DIR/ui-cluster.png (the README's pictures).
"""

import argparse
import base64
import contextlib
import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (ElementClickInterceptedException, NoSuchElementException,
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30  # seconds, for any one condition

args = None
driver = None

# The failed requests a scenario makes on purpose, each as (path, status): the browser's
# console logs every answer >= 400 as an error, and any other one fails the run. Paths are
# matched whole (query included), statuses exactly.
expected_failures = set()


def expect_failure(request_path, status):
    expected_failures.add((request_path, status))


def expect_failures_like(pattern, status):
    """Failed requests whose path fully matches the regular expression `pattern`."""
    expected_failures.add((re.compile(pattern), status))


def expected(request_path, status):
    return any(s == status and (p.fullmatch(request_path) if isinstance(p, re.Pattern) else p == request_path)
               for p, s in expected_failures)


def task_files_gone(app_slug):
    """A followed task of the app killed: its sandbox goes, the follower's next read is
    answered 404 (and it stops)."""
    expect_failures_like(
        rf"/v2/tasks/{app_slug}\.[0-9a-f-]+/files/read\?path=std(out|err)&offset=-?\d+(&length=\d+)?", 404)


# Chromium's own error page (what a refused navigation shows) is "chrome-error://chromewebdata".
ERROR_PAGE = "chrome-error://chromewebdata"


def expect_error_page(status):
    """A navigation answered `status`: logged as a failed load of Chromium's error page."""
    expected_failures.add((ERROR_PAGE, status))


LOAD_FAILED = re.compile(
    r"^(https?://[^/\s]+|chrome-error://chromewebdata)(/\S*) - Failed to load resource: the server responded with a status of (\d{3})\b")


def unexpected_console_errors(entries):
    """The console's errors (SEVERE) but the failed requests to this origin expected."""
    origins = {args.url} | ({args.leader} if args.leader else set())
    origins = {origin.split("://", 1)[1] for origin in origins}
    unexpected = []
    for entry in entries:
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        match = LOAD_FAILED.match(message)
        if match:
            origin, request_path, status = match.group(1), match.group(2), int(match.group(3))
            if origin == ERROR_PAGE:
                allowed = request_path == "/" and expected(ERROR_PAGE, status)
            else:
                host = origin.split("://", 1)[1].rsplit("@", 1)[-1]
                allowed = host in origins and expected(request_path, status)
            if allowed:
                print(f"expected console error: {message}", flush=True)
                continue
        unexpected.append(message)
    return unexpected


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--disable-gpu", "--no-first-run", "--disable-extensions", "--lang=en-US"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=options)


def fail(name, error):
    """Saves what the browser shows, says where, and exits."""
    os.makedirs(args.shots, exist_ok=True)
    base = os.path.join(args.shots, re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-"))
    print(f"FAILED: {name}: {error!r}", flush=True)
    traceback.print_exc(file=sys.stdout)
    try:
        driver.save_screenshot(base + ".png")
        print(f"screenshot: {base}.png")
        with open(base + ".html", "w") as out:
            out.write(driver.page_source)
        print(f"page: {base}.html")
        with open(base + ".console.txt", "w") as out:
            for entry in driver.get_log("browser"):
                out.write(f"{entry['level']} {entry['message']}\n")
        print(f"console: {base}.console.txt")
        print(f"url: {driver.current_url}")
    except Exception as again:  # the browser itself may be what failed
        print(f"could not save the browser's state: {again!r}")
    sys.stdout.flush()
    sys.exit(1)


@contextlib.contextmanager
def step(name):
    print(f"step: {name}", flush=True)
    started = time.monotonic()
    try:
        yield
    except SystemExit:
        raise
    except BaseException as error:
        fail(name, error)
    print(f"ok: {name} ({time.monotonic() - started:.1f}s)", flush=True)


def until(condition, what, timeout=WAIT):
    """Waits until condition() is truthy (elements that go stale or are not there yet
    count as not yet) and returns its value."""
    wait = WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    return wait.until(lambda _: condition(), message=f"waited {timeout}s for {what}")


def css(selector, root=None):
    return (root or driver).find_element(By.CSS_SELECTOR, selector)


def all_css(selector, root=None):
    return (root or driver).find_elements(By.CSS_SELECTOR, selector)


def text_of(selector):
    return css(selector).text


def click(selector):
    """Clicks what the selector finds, found afresh at each try: the pages redraw their
    tables as data arrives, so an element found earlier may have been replaced."""

    def attempt():
        element = css(selector)
        if not (element.is_displayed() and element.is_enabled()):
            return False
        element.click()
        return True

    wait = WebDriverWait(driver, WAIT, poll_frequency=0.2, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException))
    wait.until(lambda _: attempt(), message=f"waited {WAIT}s to click {selector}")


def row_text(selector):
    """The text of what the selector finds now ("" if nothing)."""
    found = all_css(selector)
    return found[0].text if found else ""


def type_into(selector, text):
    element = css(selector)
    element.clear()
    element.send_keys(text)


def path():
    return driver.execute_script("return location.pathname")


def no_error_banner():
    banners = [b.text for b in all_css(".banner.error")]
    assert not banners, f"error banners: {banners}"


def live():
    return css("#live").get_attribute("data-state") == "live"


def readme_shot(name):
    """With MARINA_UI_SCREENSHOTS=DIR, the whole page (as tall as it is) as DIR/name."""
    directory = os.environ.get("MARINA_UI_SCREENSHOTS")
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, name)
    for close in all_css(".banner .close"):
        close.click()
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 2400), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    with open(target, "wb") as out:
        out.write(base64.b64decode(shot["data"]))
    print(f"readme screenshot: {target}")


def create_app(app_id, cmd, mem="16", cpus="0.05", instances="1"):
    """Creates an app with the new-app form; ends on its page."""
    if path() not in ("/", "/ui"):
        click("nav a[data-section=apps]")
    click("#new-app-toggle")
    type_into("#new-app-form input[name=id]", app_id)
    type_into("#new-app-form textarea[name=cmd]", cmd)
    type_into("#new-app-form input[name=instances]", instances)
    type_into("#new-app-form input[name=cpus]", cpus)
    type_into("#new-app-form input[name=mem]", mem)
    click("#new-app-submit")
    until(lambda: path() == "/ui/apps" + app_id, f"the page of {app_id}")
    until(lambda: text_of("#app-title") == app_id, f"the title {app_id}")


def running_tasks():
    rows = all_css("#tasks-table tbody tr[data-task-id]")
    return [r for r in rows if "running" in r.text]


def journey():
    base = args.url
    app_id = "/ui/web"
    marker = "marina-ui-marker-7f3a"

    with step("the app list loads"):
        driver.get(base + "/")
        until(lambda: css("#apps-table tbody tr"), "the apps table")
        until(live, "the event stream to be live")
        assert "Marina" in driver.title, driver.title

    with step("the new-app form refuses a bad field next to it"):
        click("#new-app-toggle")
        type_into("#new-app-form input[name=id]", "/ui/bad")
        type_into("#new-app-form textarea[name=cmd]", "sleep 100")
        type_into("#new-app-form input[name=cpus]", "-1")
        expect_failure("/v2/apps", 422)
        click("#new-app-submit")
        error = until(lambda: css("#new-app-form .field-error[data-path='/cpus']"), "the /cpus error by its field")
        assert "cpus" in error.text, error.text
        click("#new-app-form button.quiet")

    with step("a new app is created with the form"):
        create_app(app_id, f"echo {marker}; echo {marker}-err >&2; exec sleep 1000")
        until(lambda: running_tasks(), "its task to run")
        no_error_banner()

    with step("it is scaled by clicking"):
        type_into("#scale-input", "2")
        click("#scale-button")
        until(lambda: len(running_tasks()) == 2, "two running tasks")
        until(lambda: "running 2/2" in text_of("#app-status"), "the status running 2/2")
        no_error_banner()

    with step("a task's output is followed live"):
        task_id = until(lambda: running_tasks()[0].get_attribute("data-task-id"), "a running task's id")
        click(f"#tasks-table tr[data-task-id='{task_id}'] .show-logs")
        until(lambda: marker in text_of("#log-output"), "the marker in the task's stdout")
        assert css("#log-output").get_attribute("data-task") == task_id
        css("#log-file option[value=stderr]").click()
        until(lambda: f"{marker}-err" in text_of("#log-output"), "the marker in the task's stderr")
        until(lambda: "following stderr" in text_of("#log-status"), "the follower's status")
        css("#log-file option[value=stdout]").click()
        until(lambda: marker in text_of("#log-output") and f"{marker}-err" not in text_of("#log-output"), "stdout again")
        readme_shot("ui-app.png")

    with step("the list shows it running"):
        click("nav a[data-section=apps]")
        until(lambda: "running 2/2" in row_text(f"#apps-table tr[data-app-id='{app_id}']"), "running 2/2 in its row")
        click(f"#apps-table tr[data-app-id='{app_id}'] a.app-link")
        until(lambda: text_of("#app-title") == app_id, "its page again")
        until(lambda: len(running_tasks()) == 2, "its two tasks")

    with step("an invalid edit shows the gateway's error at its path"):
        until(lambda: css("#editor").get_property("value").strip().startswith("{"), "the definition in the editor")
        definition = json.loads(css("#editor").get_property("value"))
        assert definition["id"] == app_id and "tasks" not in definition, definition
        definition["cpus"] = -1
        editor = css("#editor")
        editor.send_keys(Keys.CONTROL, "a", Keys.NULL, json.dumps(definition, indent=2))
        until(lambda: "Edited" in text_of("#editor-state"), "the editor marked edited")
        expect_failure(f"/v2/apps{app_id}?partialUpdate=false", 422)
        click("#deploy-edit")
        item = until(lambda: css("#edit-errors li[data-path='/cpus']"), "the /cpus error under the editor")
        assert "0.0 or more" in item.text or "cpus" in item.text, item.text
        assert css("#edit-errors li[data-path='/cpus'] code.path").text == "/cpus"
        selected = driver.execute_script(
            "const e = document.getElementById('editor'); return e.value.slice(e.selectionStart, e.selectionEnd)")
        assert selected == '"cpus"', f"the editor selects the field: {selected!r}"
        click("#reset-edit")
        until(lambda: not all_css("#edit-errors li"), "the errors cleared")

    with step("a valid edit deploys and makes a version to roll back to"):
        definition = json.loads(css("#editor").get_property("value"))
        definition["labels"] = {"edited": "by-the-ui"}
        css("#editor").send_keys(Keys.CONTROL, "a", Keys.NULL, json.dumps(definition, indent=2))
        click("#deploy-edit")
        until(lambda: "edited=by-the-ui" in text_of("#config-summary"), "the new label in the summary")
        until(lambda: len(all_css("#versions-table button.rollback")) >= 1, "an older version to roll back to")
        until(lambda: len(running_tasks()) == 2 and not all_css("#deployment-section"), "the edit deployed")
        no_error_banner()

    with step("a version is rolled back to by clicking"):
        # Newest first: the edit (current), then the version scaled to 2, without the label.
        click("#versions-table tbody tr:nth-child(2) button.rollback")
        click("#confirm-ok")
        until(lambda: "edited=by-the-ui" not in text_of("#config-summary"), "the label gone again")
        until(lambda: len(running_tasks()) == 2 and not all_css("#deployment-section"), "two tasks, deployed")
        no_error_banner()

    with step("the app is restarted by clicking"):
        before = set(until(lambda: [r.get_attribute("data-task-id") for r in running_tasks()], "the task ids"))
        task_files_gone("ui_web")
        click("#restart")
        until(lambda: (lambda now: len(now) == 2 and not now & before)(
            {r.get_attribute("data-task-id") for r in running_tasks()}), "two new tasks")
        no_error_banner()

    with step("text from the API stays text, on the list and the app page"):
        # An app whose label and output are markup: shown as typed, never parsed (the UI
        # builds nodes and text, no innerHTML).
        markup = "<img src=x onerror=window.__xss=1> <b>bold</b>"
        click("nav a[data-section=apps]")
        click("#new-app-toggle")
        type_into("#new-app-form input[name=id]", "/ui/markup")
        type_into("#new-app-form textarea[name=cmd]", f"echo '{markup}'; exec sleep 1000")
        type_into("#new-app-form input[name=cpus]", "0.05")
        type_into("#new-app-form input[name=mem]", "16")
        type_into("#new-app-form textarea[name=extra]", json.dumps({"labels": {"note": markup}}))
        click("#new-app-submit")
        until(lambda: text_of("#app-title") == "/ui/markup", "its page")

        def no_markup(where):
            found = driver.execute_script("""return {
                imgs: document.querySelectorAll("img").length,
                bolds: [...document.querySelectorAll("b")].filter((b) => b.textContent.includes("bold")).length,
                xss: typeof window.__xss}""")
            assert found == {"imgs": 0, "bolds": 0, "xss": "undefined"}, f"markup became elements {where}: {found}"

        until(lambda: f"note={markup}" in text_of("#config-summary"), "the label, literally, in the summary")
        until(lambda: f"echo '{markup}'" in text_of("#config-summary"), "the command, literally, in the summary")
        until(lambda: markup in text_of("#log-output"), "the output, literally")
        assert f"echo '{markup}'" in css("#editor").get_property("value")
        no_markup("on the app page")
        click("nav a[data-section=apps]")
        until(lambda: f"echo '{markup}'" in row_text("#apps-table tr[data-app-id='/ui/markup']"), "the command, literally, in its row")
        no_markup("on the list")

    with step("a failing app says why, on the list and its page"):
        create_app("/ui/boom", "echo boom; exit 3")
        until(lambda: "exited with code 3" in text_of("#last-failure"), "the last failure's message")
        until(lambda: "failing" in text_of("#app-status"), "the failing status")
        # The failed task's output: its sandbox outlives it (until collected), so what it
        # printed before it failed is what the operator sees.
        click("#last-failure .failure-output")

        def failed_output():
            task = css("#log-output").get_attribute("data-task") or "-"
            return task.startswith("ui_boom.") and "boom" in text_of("#log-output")

        until(failed_output, "the failed task's output")
        click("nav a[data-section=apps]")
        boom = "#apps-table tr[data-app-id='/ui/boom']"
        until(lambda: "failing" in row_text(boom) and "exited with code 3" in row_text(boom), "failing and why in its row")

    with step("a deployment that cannot finish shows why it waits"):
        create_app("/ui/huge", "sleep 1000", cpus="64")
        until(lambda: css("#deployment-section .deployment-step"), "the deployment in progress")
        until(lambda: "InsufficientCpus" in text_of("#queue-reasons"), "the declined offers' reason")
        assert "Step 1 of 1" in text_of("#deployment-section"), text_of("#deployment-section")
        click("nav a[data-section=apps]")
        huge = "#apps-table tr[data-app-id='/ui/huge']"
        until(lambda: "InsufficientCpus" in row_text(huge) and "deploying" in row_text(huge), "why it waits, in its row")
        readme_shot("ui-apps.png")
        click(f"{huge} a.app-link")
        # Rolling back its creation deletes the app: its page, reloading, finds it gone.
        expect_failure("/v2/apps/ui/huge?embed=app.readiness", 404)
        expect_failure("/v2/apps/ui/huge/versions", 404)
        click("#deployment-section .rollback-deployment")
        click("#confirm-ok")
        until(lambda: not all_css("#deployment-section"), "the deployment rolled back")

    with step("the cluster page lists the agents and the leading master"):
        click("nav a[data-section=cluster]")
        until(lambda: path() == "/ui/cluster", "the cluster page")
        until(lambda: "process" in row_text("#agents-table tbody tr"), "the agent and its runtime")
        until(lambda: "active" in row_text("#agents-table tbody tr"), "the agent active")
        until(lambda: all_css(f"#masters-table tr.leader[data-address='{args.master}']"), "the leading master marked")
        until(lambda: "leader" in row_text("#gateways-table tr.leader"), "the leading gateway marked")
        readme_shot("ui-cluster.png")

    with step("an address that is no app id shows not found and calls nothing"):
        # `..%2F` would make the id `/../deployments/X` (and Destroy a DELETE of a
        # deployment); a bad escape would make decoding throw.
        for bad in ("..%2Fdeployments%2FX", "ui/%E0%A4%A", "ui//web", "%ZZ"):
            driver.get(base + "/ui/apps/" + bad)
            until(lambda: "is not a valid app id" in text_of("#not-found-reason"), f"{bad} refused")
            assert not all_css("#destroy") and not all_css("#app-title"), bad
            called = driver.execute_script(
                "return performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)")
            assert not [c for c in called if c.startswith(("/v2/apps", "/v2/deployments", "/v2/tasks"))], called
        # A valid id of no app: the gateway's 404, said on the page.
        expect_failure("/v2/apps/ui/nothing?embed=app.readiness", 404)
        expect_failure("/v2/apps/ui/nothing/versions", 404)
        driver.get(base + "/ui/apps/ui/nothing")
        until(lambda: "No app /ui/nothing" in text_of("#app-error"), "no such app")

    with step("an app page opened directly loads"):
        driver.get(base + "/ui/apps" + app_id)
        until(lambda: text_of("#app-title") == app_id, "the title")
        until(lambda: len(running_tasks()) == 2, "its tasks")

    with step("a task is killed by clicking"):
        victim = until(lambda: running_tasks()[0].get_attribute("data-task-id"), "a running task's id")
        click(f"#tasks-table tr[data-task-id='{victim}'] .kill-task")
        until(lambda: not all_css(f"#tasks-table tr[data-task-id='{victim}']"), "the killed task gone")
        until(lambda: len(running_tasks()) == 2, "a replacement running")

    with step("the app is suspended by clicking"):
        click("#suspend")
        click("#confirm-ok")
        until(lambda: "suspended" in text_of("#app-status"), "the status suspended")
        until(lambda: not all_css("#tasks-table tr[data-task-id]"), "no tasks")
        click("nav a[data-section=apps]")
        until(lambda: "suspended" in row_text(f"#apps-table tr[data-app-id='{app_id}']"), "suspended in its row")
        click(f"#apps-table tr[data-app-id='{app_id}'] a.app-link")

    with step("the app is destroyed by clicking"):
        until(lambda: text_of("#app-title") == app_id, "its page")
        # A reload of its page may be on its way as it goes.
        expect_failure(f"/v2/apps{app_id}?embed=app.readiness", 404)
        expect_failure(f"/v2/apps{app_id}/versions", 404)
        click("#destroy")
        click("#confirm-ok")
        until(lambda: path() == "/ui", "back on the list")
        until(lambda: not all_css(f"#apps-table tr[data-app-id='{app_id}']"), "its row gone")
        no_error_banner()


def guarded():
    standby = args.url
    host = standby.split("://", 1)[1]

    with step("without credentials the gateway refuses"):
        for refused in ("/v2/apps", "/ui", "/ui/assets/app.js"):
            try:
                urllib.request.urlopen(standby + refused)
                raise AssertionError(f"{refused} answered without credentials")
            except urllib.error.HTTPError as error:
                assert error.code == 401, (refused, error.code)
                assert error.headers["WWW-Authenticate"].startswith("Basic"), error.headers
        # A browser without them gets no UI (a real one would prompt; headless, it gives up).
        # Chromium logs the refused page as its error page's (some versions by its address).
        expect_failure("/ui", 401)
        expect_error_page(401)
        driver.get(standby + "/ui")
        assert not all_css("#apps-table"), "the UI loaded without credentials"

    with step("signed in, the list loads through the standby"):
        # The browser's own Basic credentials, as it prompts for them; here in the address.
        # It then sends them with every call the page makes.
        driver.get(f"http://{args.user}:{args.password}@{host}/ui")
        until(lambda: css("#apps-table tbody tr"), "the apps table")
        until(live, "the event stream to be live through the standby")
        until(lambda: "via " + host in text_of("#leader"), "the header saying the page came through a standby")
        # Later pages need no credentials in the address: the browser keeps them.
        driver.get(standby + "/ui/cluster")
        until(lambda: all_css("#agents-table tbody tr"), "the cluster page")
        click("nav a[data-section=apps]")
        until(lambda: css("#apps-table tbody tr"), "the apps table again")

    with step("an app is created through the standby and shows its output"):
        create_app("/guarded/echo", "echo guarded-marker; exec sleep 1000")
        until(lambda: running_tasks(), "its task running")
        task_id = until(lambda: running_tasks()[0].get_attribute("data-task-id"), "its task's id")
        click(f"#tasks-table tr[data-task-id='{task_id}'] .show-logs")
        until(lambda: "guarded-marker" in text_of("#log-output"), "its output")
        no_error_banner()

    with step("events reach the page through the standby"):
        # A change made elsewhere (the leader's API) shows without reloading.
        request = urllib.request.Request(
            args.leader + "/v2/apps/guarded/echo", method="PUT", data=b'{"instances": 2}',
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + base64.b64encode(
                         f"{args.user}:{args.password}".encode()).decode()})
        urllib.request.urlopen(request).read()
        until(lambda: len(running_tasks()) == 2, "the second task, from events", timeout=20)

    with step("the cluster page marks the leading gateway"):
        click("nav a[data-section=cluster]")
        until(lambda: len(all_css("#gateways-table tbody tr")) == 2, "both gateways")
        leader = args.leader.split("://", 1)[1]
        until(lambda: all_css(f"#gateways-table tr.leader[data-address='{leader}']"), "the leading gateway marked")
        until(lambda: "this page" in row_text(f"#gateways-table tr[data-address='{host}']"), "the standby marked as this page's")
        until(lambda: all_css("#agents-table tbody tr"), "the agents")

    with step("the app is destroyed through the standby"):
        driver.get(standby + "/ui/apps/guarded/echo")
        until(lambda: text_of("#app-title") == "/guarded/echo", "its page")
        expect_failure("/v2/apps/guarded/echo?embed=app.readiness", 404)
        task_files_gone("guarded_echo")
        expect_failure("/v2/apps/guarded/echo/versions", 404)
        click("#destroy")
        click("#confirm-ok")
        until(lambda: path() == "/ui", "back on the list")
        until(lambda: not all_css("#apps-table tr[data-app-id='/guarded/echo']"), "its row gone")
        no_error_banner()


def main():
    global args, driver
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["journey", "guarded"])
    parser.add_argument("url")
    parser.add_argument("--shots", required=True)
    parser.add_argument("--master")
    parser.add_argument("--leader")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    with step("the browser starts"):
        driver = browser()
    try:
        {"journey": journey, "guarded": guarded}[args.scenario]()
        severe = unexpected_console_errors(driver.get_log("browser"))
        with step("the browser's console has no errors"):
            assert not severe, severe
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
    print("done")


if __name__ == "__main__":
    main()
