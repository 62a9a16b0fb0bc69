"""`Device`: a target profile, and the profiles edgepress ships (`edgepress devices` lists them).

A profile says what the device is (architecture), what runs models there (runtimes and TFLite
delegate or ONNX execution providers, in order of preference), with how many threads, which
precisions are worth trying there, its memory budget, the channel multiple its kernels prefer, and
how to reach it: `local` (this machine),
`ssh` (copy the runner over and run it there) or `adb` (drive LiteRT's benchmark_model on a phone).

Users add their own profile file (`targets: [path/to/my-board.yaml]`) or override fields of a
shipped one in the recipe (`targets: [{name: rpi4, reach: {host: 10.0.0.5, user: pi}}]`).
"""

from __future__ import annotations

import ipaddress
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepress.errors import EdgepressError
from edgepress.specs.section import Section

TFLITE_RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tf.lite", "benchmark_model")
ONNX_RUNTIMES = ("onnxruntime",)
# ssh gets host and user as arguments: a value starting with '-' would be read as an option (-oProxyCommand=...
# runs a command), and shell characters have no place in either. Host: DNS labels (letters, digits, '-', not
# first or last) joined by dots, or an IP address. User: what POSIX allows in a login name.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")


class Reach(Section):
    """How edgepress gets an artifact onto the device and runs it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ssh", "adb"] = "local"
    # ssh
    host: str | None = Field(None, description="Host name or IP address of the device.")
    port: int = Field(22, ge=1, le=65535)
    user: str | None = Field(None, description="Login name on the device; default: ssh's (yours, or ~/.ssh/config's).")
    key: str | None = Field(None, description="Private key file; default: ssh's own (agent, ~/.ssh/id_*).")
    known_hosts: str | None = Field(None, description="known_hosts file to check the host key against; default ssh's.")
    check_host_key: bool = Field(True, description="Refuse hosts whose key is not in known_hosts (recommended).")
    python: str = Field("python3", description="Python command on the device (may include arguments).")
    workdir: str = Field("/tmp", description="Directory on the device under which a per-run folder is made.")
    connect_timeout_s: float = Field(10, gt=0)
    # adb
    serial: str | None = Field(None, description="adb device serial; default: the only device attached.")
    benchmark_model: str = Field("/data/local/tmp/benchmark_model", description="Path of LiteRT's benchmark_model.")
    # every step: copying, running, cleaning up
    timeout_s: float = Field(600, gt=0, description="Limit for each step on the device.")

    @field_validator("host")
    @classmethod
    def _host_name(cls, host: str | None) -> str | None:
        if host is None:
            return None
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IP address (letters, digits, '-', '_' and '.' "
                             "only, not starting with '-')")
        return host

    @field_validator("python")
    @classmethod
    def _a_command(cls, python: str) -> str:
        import shlex

        try:
            words = shlex.split(python)
        except ValueError as e:  # an unclosed quote
            raise ValueError(f"{python!r} is not a command line ({e})") from None
        if not words:
            raise ValueError("give the Python command on the device, e.g. python3")
        return python

    @field_validator("user")
    @classmethod
    def _user_name(cls, user: str | None) -> str | None:
        if user is not None and not _USER.fullmatch(user):
            raise ValueError(f"{user!r} is not a login name (letters, digits, '_', '.' and '-' only, not starting "
                             "with '-', at most 64 characters)")
        return user


class ExportChoice(Section):
    model_config = ConfigDict(extra="forbid")

    format: Literal["tflite", "onnx"]
    precision: str

    @model_validator(mode="after")
    def _known_precision(self) -> ExportChoice:
        from edgepress.formats import precision_names

        if self.precision not in precision_names(self.format):
            raise ValueError(f"{self.format} has no precision '{self.precision}'; use one of: "
                             f"{', '.join(precision_names(self.format))}")
        return self


class KnownFailure(Section):
    """An export this device's runtime is known not to run (an op, op version or schema its runtime lacks)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["tflite", "onnx"]
    precision: str
    reason: str = Field(description="What the runtime lacks, e.g. 'ai-edge-litert 1.4 has no int4 FULLY_CONNECTED'.")


class Device(Section):
    """A target device profile."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    architecture: str = Field(description="e.g. x86_64, aarch64, arm64-v8a")
    runtimes: list[str] = Field(description=f"In order of preference: {', '.join(TFLITE_RUNTIMES + ONNX_RUNTIMES)}.")
    delegate: Literal["xnnpack", "gpu", "none"] = Field("xnnpack", description="TFLite delegate (benchmark_model).")
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime providers, in order of preference."
    )
    threads: int = Field(1, ge=1)
    precisions: list[ExportChoice] = Field(description="The exports worth trying on this device.")
    memory_budget_mb: float | None = Field(None, gt=0, description="Artifacts using more memory fail this device.")
    channel_multiple: int = Field(
        1, ge=1, description="Channel counts the device's kernels run best on are multiples of this (their vector "
        "width or tile); structured_prune's round_to takes it. 1: no preference."
    )
    reach: Reach = Field(default_factory=Reach)
    emulated: bool = Field(
        False, description="Its CPU is emulated (qemu): accuracy and agreement are the real ARM kernels', latency is "
        "not a board's. Emulated latency is recorded but never compared with real devices nor recommended on."
    )
    known_failures: list[KnownFailure] = Field(
        default_factory=list, description="Exports its runtime is known not to run; the plan warns when one is chosen."
    )

    @field_validator("name")
    @classmethod
    def _a_name(cls, name: str) -> str:
        from edgepress.values import plain_name

        return plain_name(name)

    def runs(self, format: str) -> bool:
        """True if one of this device's runtimes runs `format` files."""
        return any(r in (TFLITE_RUNTIMES if format == "tflite" else ONNX_RUNTIMES) for r in self.runtimes)

    def with_overrides(self, overrides: dict) -> Device:
        """This profile with some fields replaced (nested `reach` fields merge)."""
        merged = self.model_dump()
        for key, value in overrides.items():
            if key == "reach" and isinstance(value, dict):
                merged["reach"] = {**merged["reach"], **value}
            else:
                merged[key] = value
        return _validate(merged, f"the overrides of device '{self.name}'")


def shipped_profiles() -> dict[str, Path]:
    """The profiles shipped with edgepress, by name."""
    folder = resources.files("edgepress") / "devices"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_device(name_or_path: str) -> Device:
    """A shipped profile by name, or a profile from a YAML file."""
    shipped = shipped_profiles()
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise EdgepressError(f"Device profile {path} not found.")
    else:
        raise EdgepressError(
            f"Unknown device '{name_or_path}'. Shipped profiles: {', '.join(sorted(shipped))}; "
            "or give the path of your own profile file (.yaml)."
        )
    from edgepress.yamlfile import read_mapping

    return _validate(read_mapping(path, "Device profile"), f"device profile {path}")


def _validate(raw, source: str) -> Device:
    try:
        return Device.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top level)'}: "
                             f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())
        raise EdgepressError(f"{source} is invalid: {problems}.") from None
