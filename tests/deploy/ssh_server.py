"""A real SSH server for the tests, from pip (asyncssh): no OpenSSH server needs to be installed.

    python ssh_server.py DIR [HOST]

serves on a free port of HOST (default 127.0.0.1; printed as the first line on stdout once it listens) with the host
key DIR/host_key, and accepts only the public keys in DIR/authorized_keys. A command runs as `/bin/sh -c
COMMAND` in the home directory, as OpenSSH's sshd runs it; file copies use SFTP (what `scp` speaks since
OpenSSH 9) or the legacy scp protocol (`scp -O`, older clients). When the client goes away, the command's
process group is killed, so a test that times out leaves no command running.

`keys(DIR)` writes the keys, `known_hosts_line(DIR, port)` the line a client checks the host key against, and
`start(DIR, HOST)` runs this server in a process of its own and returns it with its port once it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncssh


def keys(folder: Path) -> None:
    """Write host_key, user_key (authorized) and stranger_key (not authorized) into `folder`, OpenSSH format."""
    for name in ("host_key", "user_key", "stranger_key"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(folder / name, "openssh")
        key.write_public_key(folder / f"{name}.pub", "openssh")
        (folder / name).chmod(0o600)  # ssh refuses a private key others can read
    (folder / "authorized_keys").write_bytes((folder / "user_key.pub").read_bytes())


def known_hosts_line(folder: Path, port: int, host: str = "127.0.0.1") -> str:
    kind, key = (folder / "host_key.pub").read_text().split()[:2]
    return f"[{host}]:{port} {kind} {key}\n"


def start(folder: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    """This server in a process of its own on a free port of `host`, serving the keys in `folder`, once it listens;
    RuntimeError with its error output when it does not start."""
    server = subprocess.Popen([sys.executable, __file__, str(folder), host], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # the port, printed once it listens (or nothing if it failed to start)
    if not line.strip().isdigit():
        server.kill()
        raise RuntimeError(f"the test SSH server did not start: {server.stderr.read()}")
    return server, int(line)


async def _pump(reader: asyncio.StreamReader, writer) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def _feed(reader, local: asyncio.subprocess.Process) -> None:
    try:
        while chunk := await reader.read(65536):
            local.stdin.write(chunk)
            await local.stdin.drain()
    except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
        pass
    finally:
        local.stdin.close()


async def _exec(process: asyncssh.SSHServerProcess) -> None:
    pipe = asyncio.subprocess.PIPE
    local = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", process.command or "exec $SHELL -l", stdin=pipe, stdout=pipe, stderr=pipe,
        cwd=Path.home(), start_new_session=True,
    )
    feeding = asyncio.ensure_future(_feed(process.stdin, local))
    output = asyncio.gather(_pump(local.stdout, process.stdout), _pump(local.stderr, process.stderr))
    closed = asyncio.ensure_future(process.channel.wait_closed())
    await asyncio.wait([output, closed], return_when=asyncio.FIRST_COMPLETED)
    if closed.done():  # the client went away: end the command, as a hang-up would
        try:
            os.killpg(local.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output.cancel()
        feeding.cancel()
        await asyncio.gather(output, feeding, return_exceptions=True)
        await local.wait()
        return
    code = await local.wait()
    feeding.cancel()
    if code < 0:
        process.exit_with_signal(signal.Signals(-code).name.removeprefix("SIG"))
    else:
        process.exit(code)


class _SFTPServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server (the whole file system, as this user), which also reports exit status 0 at the end
    of the session as OpenSSH's sftp-server does: `scp` treats a session without one as a failure."""

    def exit(self) -> None:
        super().exit()
        self.channel.exit(0)


async def _serve(folder: Path, host: str) -> None:
    server = await asyncssh.listen(
        host, 0, server_host_keys=[str(folder / "host_key")],
        authorized_client_keys=str(folder / "authorized_keys"),
        process_factory=_exec, encoding=None, sftp_factory=_SFTPServer, allow_scp=True,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
