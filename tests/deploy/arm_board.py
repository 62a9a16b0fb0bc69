"""The emulated 64-bit Raspberry Pi the tests (and benchmarks/arm_vs_x86.py) measure on, brought up here.

    root = build()                   # tests/deploy/arm_board.sh: the cached Debian arm64 root (built when missing)
    with Board(root, folder) as board:
        board.profile                # a device profile file: rpi5-emulated reached at 127.0.0.1:<port>

`Board` starts the root's own OpenSSH server (an aarch64 binary, run by qemu-user through binfmt_misc) in a chroot,
on a free loopback port, with a host key and an authorized user key made for this board in `folder`; everything the
runner then runs there (its Python, numpy, LiteRT, onnxruntime) is the root's aarch64 build. The chroot's /proc and
/dev are mounted in a private mount namespace (unshare), so they vanish with the server. Needs root.

    python tests/deploy/arm_board.py FOLDER     # bring it up by hand: prints the profile's path, serves until ^C
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("arm_board.sh")
# The first build downloads Debian and the wheels and installs them under qemu: minutes, not seconds.
BUILD_TIMEOUT_S = 3600
# sshd under qemu on a busy 2-core machine takes a few seconds to listen.
START_TIMEOUT_S = 180


class BoardError(RuntimeError):
    """The emulated board could not be built or started; the message says why and what to do."""


def build(cache: Path | None = None) -> Path:
    """The board's root file system, built by arm_board.sh when the cache has none (or an outdated one)."""
    command = ["bash", str(SCRIPT)] + ([str(cache)] if cache else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BoardError(f"{SCRIPT.name} did not finish within {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BoardError(f"{SCRIPT.name} failed (exit {done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1])


class Board:
    """The root's sshd on a loopback port, and a device profile that reaches it (see the module doc)."""

    def __init__(self, root: Path, folder: Path) -> None:
        self.root, self.folder = Path(root), Path(folder)
        self.port: int | None = None
        self.profile: Path | None = None
        self._server: subprocess.Popen | None = None
        # The keys sshd reads live inside the root (it is chrooted); removed again by stop().
        self._inside = f"/etc/edgepress-board/{secrets.token_hex(6)}"

    def __enter__(self) -> Board:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        keys = self.root / self._inside.lstrip("/")
        keys.mkdir(parents=True, mode=0o700)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, where in (("host_key", keys), ("user_key", self.folder)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepress-board", "-f",
                            str(where / name)], check=True)
        shutil.copy(self.folder / "user_key.pub", keys / "authorized_keys")
        (keys / "authorized_keys").chmod(0o600)
        last = ""
        for _ in range(3):  # a free port can be taken between asking for it and sshd binding it
            self.port = _free_port()
            self._server = self._spawn(self.port)
            last = self._wait_listening()
            if not last:
                break
        else:
            raise BoardError(f"the board's sshd did not start: {last}")
        kind, key = (keys / "host_key.pub").read_text().split()[:2]
        (self.folder / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        self.profile = self._write_profile()

    def _spawn(self, port: int) -> subprocess.Popen:
        sshd = [
            "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-p", str(port), "-o", "ListenAddress=127.0.0.1",
            "-h", f"{self._inside}/host_key", "-o", f"AuthorizedKeysFile={self._inside}/authorized_keys",
            "-o", "PermitRootLogin=prohibit-password", "-o", "PasswordAuthentication=no", "-o", "UsePAM=no",
            "-o", "Subsystem=sftp internal-sftp", "-o", "PidFile=none",
        ]
        # No /sys: onnxruntime's cpuinfo then finds the host's x86 CPU there and crashes under qemu (without it, it
        # warns and runs).
        script = ('mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && mkdir -p "$0/run/sshd" && '
                  'exec chroot "$0" "$@"')
        log = (self.folder / "sshd.log").open("wb")
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                                 str(self.root), *sshd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_listening(self) -> str:
        """'' once sshd answers with its banner; else why not (it exited, or never answered)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                return f"it exited with {self._server.returncode}: {self._log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return ""
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        return f"no SSH banner on port {self.port} within {START_TIMEOUT_S} s: {self._log_tail()}"

    def _log_tail(self) -> str:
        path = self.folder / "sshd.log"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-5:]) if path.exists() else ""

    def _write_profile(self) -> Path:
        import yaml

        from edgepress.devices import load_device

        device = load_device("rpi5-emulated").with_overrides({"reach": {
            "port": self.port, "key": str(self.folder / "user_key"), "known_hosts": str(self.folder / "known_hosts"),
        }})
        path = self.folder / "rpi5-emulated.yaml"
        path.write_text(yaml.safe_dump(device.model_dump(mode="json"), sort_keys=False))
        return path

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            try:
                import os

                os.killpg(self._server.pid, signal.SIGTERM)
                self._server.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self._server.kill()
        self._server = None
        shutil.rmtree(self.root / self._inside.lstrip("/"), ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    with Board(build(), Path(sys.argv[1])) as board:
        print(board.profile, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
