"""Fixtures the deploy tests share: this machine as an SSH device, behind a real SSH server on 127.0.0.1."""

from __future__ import annotations

import getpass
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgepress.devices import load_device
from tests.deploy import ssh_server

WATCH = Path(__file__).with_name("runner_watch.py")


@dataclass
class Loopback:
    """The test SSH server's `reach:` (a device profile's, or a recipe target's), and the log of what each runner it
    ran had loaded (tests/deploy/runner_watch.py: one JSON line per run)."""

    reach: dict
    runner_log: Path

    def runs(self) -> list[dict]:
        import json

        text = self.runner_log.read_text() if self.runner_log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def loopback_ssh(tmp_path_factory):
    """This machine behind a real SSH server on 127.0.0.1 (tests/deploy/ssh_server.py), reached with the system's
    ssh and scp; the runner runs watched (runner_watch.py) by this Python."""
    missing = [tool for tool in ("ssh", "scp") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the OpenSSH client ({', '.join(missing)}) is not installed: apt-get install openssh-client")
    d = tmp_path_factory.mktemp("ssh")
    ssh_server.keys(d)
    try:
        server, port = ssh_server.start(d)
    except RuntimeError as e:
        pytest.fail(str(e))
    (d / "known_hosts").write_text(ssh_server.known_hosts_line(d, int(port)))
    (d / "remote").mkdir()
    log = d / "runner-loaded.jsonl"
    reach = {"kind": "ssh", "host": "127.0.0.1", "port": int(port), "user": getpass.getuser(),
             "key": str(d / "user_key"), "known_hosts": str(d / "known_hosts"),
             "python": shlex.join([sys.executable, str(WATCH), str(log)]), "workdir": str(d / "remote"),
             "timeout_s": 120}
    yield Loopback(reach, log)
    server.kill()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def ssh_device(loopback_ssh):
    """The x86-host profile reached over SSH at the loopback server, named loopback-ssh."""
    return load_device("x86-host").with_overrides({"name": "loopback-ssh", "reach": loopback_ssh.reach})
