#!/usr/bin/env bash
# Build (once) the emulated 64-bit Raspberry Pi the tests measure on: a Debian bookworm arm64 root file system
# with Python 3.11, OpenSSH's server and the on-device runner's venv, run by qemu-user-static through binfmt_misc.
#
#   bash tests/deploy/arm_board.sh [CACHE]     # CACHE: default $EDGEPRESS_ARM_BOARD or ~/.cache/edgepress/arm64-board
#
# The root is kept in CACHE/root and reused while CACHE/root/.edgepress-board holds this script's BOARD_VERSION;
# otherwise it is built again into CACHE/root.partial and renamed into place only when complete (a killed build
# leaves nothing that looks finished; a finished Debian stage is reused by the next try). Needs root, and the Debian packages qemu-user-static, binfmt-support and
# mmdebstrap (setup.sh installs them). Prints the root's path as its last line.
set -euo pipefail
BOARD_VERSION="bookworm-arm64-2 edgepress-runner litert1 tflite-runtime"
cache="${1:-${EDGEPRESS_ARM_BOARD:-$HOME/.cache/edgepress/arm64-board}}"
root="$cache/root"

fail() { echo "arm_board.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "building and starting the emulated board needs root (chroot, mounts, binfmt_misc)."
for tool in qemu-aarch64-static update-binfmts mmdebstrap unshare; do
  command -v "$tool" >/dev/null || fail "'$tool' is missing: run setup.sh (it installs qemu-user-static, binfmt-support and mmdebstrap)."
done

# binfmt_misc: the kernel hands aarch64 ELF files to qemu. The 'F' flag (Debian's fix_binary yes) makes the kernel
# open the interpreter now, so it works inside the chroot without a copy of qemu there.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc (is this a container without it?)."
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || fail "update-binfmts could not register qemu-aarch64."
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "binfmt_misc has qemu-aarch64 but it is disabled."
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "qemu-aarch64 is registered without the F flag."

if [ -f "$root/.edgepress-board" ] && [ "$(cat "$root/.edgepress-board")" = "$BOARD_VERSION" ]; then
  echo "$root"
  exit 0
fi

# Runs a command inside a root with its own /proc and /dev, mounted in a private mount namespace: they go away
# with the command, nothing stays mounted on this machine.
in_root() {
  unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"' "$@"
}

mkdir -p "$cache"
partial="$cache/root.partial"
# An outdated board keeps its Debian stage and the venvs it has: only what is missing is installed.
if [ -d "$root" ]; then
  rm -rf "$partial"
  mv "$root" "$partial"
fi
# Stage 1, Debian itself (the slow part: every package is configured under qemu). Kept when stage 2 fails.
if [ ! -f "$partial/.edgepress-base" ]; then
  rm -rf "$partial"
  mmdebstrap --quiet --arch=arm64 --variant=apt --include=python3,python3-venv,openssh-server,ca-certificates \
    bookworm "$partial" http://deb.debian.org/debian
  touch "$partial/.edgepress-base"
fi
# Stage 2, the runner's dependencies, installed exactly as README tells a Raspberry Pi user: a venv and pip, which
# gets the aarch64 wheels the package index offers for the board's Python. The board resolves names and trusts
# certificate authorities as this machine does (a TLS-inspecting proxy's CA included), for this download only.
cp /etc/resolv.conf "$partial/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$partial/etc/edgepress-host-ca.crt"
venv() {  # venv NAME IMPORT PACKAGE...: /opt/NAME with PACKAGE..., unless a finished one is there
  local name="$1" check="$2"
  shift 2
  [ -f "$partial/opt/$name/.edgepress-done" ] && return 0
  rm -rf "$partial/opt/$name"
  in_root "$partial" python3 -m venv "/opt/$name"
  # `env -i`: none of this machine's settings (pip's, requests') leak into the board.
  in_root "$partial" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/etc/edgepress-host-ca.crt \
    "/opt/$name/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "$@"
  in_root "$partial" "/opt/$name/bin/python" -c "import $check"
  touch "$partial/opt/$name/.edgepress-done"
}
# What README tells a Pi user to install: the newest wheels the index has for this Python.
venv edgepress-runner "numpy, onnxruntime, ai_edge_litert.interpreter" numpy ai-edge-litert onnxruntime
# Older runtimes a board may have (version skew, tests/deploy/test_arm_board.py): LiteRT 1.x, and tflite-runtime,
# whose last wheels (2.14) are built for numpy 1.x.
venv litert1 "numpy, ai_edge_litert.interpreter" "ai-edge-litert<2" numpy
venv tflite-runtime "numpy, tflite_runtime.interpreter" tflite-runtime "numpy<2"
rm "$partial/etc/edgepress-host-ca.crt"
echo "$BOARD_VERSION" > "$partial/.edgepress-board"
mv "$partial" "$root"
echo "$root"
