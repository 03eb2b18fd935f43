"""What the scripts driving Marathon's Python client share: the compatibility shim the
unmodified client needs on this Python, and waiting on a condition."""

import collections
import collections.abc
import time

# marathon 0.13 (its last release) predates Python 3.10, which moved these ABCs; restore
# the old names so the unmodified client runs on this Python. Imported before `marathon`.
collections.Iterable = collections.abc.Iterable
collections.Mapping = collections.abc.Mapping


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)
