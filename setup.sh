#!/usr/bin/env bash
# Everything edgepress and its tests need on a fresh Debian machine: the system programs the tests drive
# (Chromium for the report's browser test, the OpenSSH client for the ssh transport, qemu-user-static, binfmt-support
# and mmdebstrap for the emulated arm64 board), installed when missing,
# and a venv with edgepress and its dev extra. README's first command and .ci/run both start with it.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
command -v chromium >/dev/null || missing+=(chromium)
{ command -v ssh >/dev/null && command -v scp >/dev/null; } || missing+=(openssh-client)
# The emulated arm64 board of tests/deploy/test_arm_board.py: qemu-user through binfmt_misc, and mmdebstrap to build
# its Debian arm64 root (tests/deploy/arm_board.sh builds it once, into ~/.cache/edgepress/arm64-board).
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (Debian packages)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[dev]'
