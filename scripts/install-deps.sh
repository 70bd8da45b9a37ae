#!/usr/bin/env bash
# Installs what building and testing Wedge needs on Debian: containerd and runc (the real
# parts the tests run against), clang + wasi-libc (WASI test programs in C), a static busybox
# (the runc reference in benchmarks). Skips apt entirely when everything is there.
set -euo pipefail

packages=(containerd runc clang lld wasi-libc libclang-rt-14-dev-wasm32 busybox-static)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
