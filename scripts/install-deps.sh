#!/usr/bin/env bash
# Installs what building and testing Wedge needs on Debian: containerd and runc (the real
# parts the tests run against), clang + wasi-libc (WASI test programs in C), a static busybox
# (the runc reference in benchmarks), protoc (containerd's API bindings), a registry
# (docker-registry, and apache2-utils' htpasswd for its basic auth: push/pull tests), CNI plugins + iptables (pod networking in the CRI
# tests) and, beside the system containerd 1.6, containerd
# 1.7 from Debian trixie unpacked under /opt/wedge-test (wasm-layer images need >= 1.7.7).
# Skips apt entirely when everything is there.
set -euo pipefail

packages=(containerd runc clang lld wasi-libc libclang-rt-14-dev-wasm32 busybox-static
  protobuf-compiler docker-registry apache2-utils containernetworking-plugins iptables openssl python3 binutils)
containerd17_version="1.7.24~ds1-6+deb13u1"
containerd17_dir=/opt/wedge-test/containerd-1.7
# sid moves on: this version if the mirror still has it, else sid's current containerd.
containerd21_version="2.1.9+ds1-5"
containerd21_dir=/opt/wedge-test/containerd-2.1

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
need_containerd17=false
[ -x "$containerd17_dir/usr/bin/containerd" ] || need_containerd17=true
need_containerd21=false
[ -x "$containerd21_dir/usr/bin/containerd" ] || need_containerd21=true

if ((${#missing[@]})) || $need_containerd17 || $need_containerd21; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]} $($need_containerd17 && echo "containerd 1.7 in $containerd17_dir") $($need_containerd21 && echo "containerd 2.1 in $containerd21_dir") (run as root)" >&2
    exit 1
  fi
fi

# add_source SUITE PRIORITY: Debian SUITE as a source pinned at PRIORITY (below bookworm's
# 500), so nothing installed moves: only the downloads below take anything from it.
add_source() {
  grep -rqs "Suites: $1" /etc/apt/sources.list.d/ && return
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$1" > "/etc/apt/sources.list.d/wedge-$1.sources"
  printf 'Package: *\nPin: release n=%s\nPin-Priority: %s\n' "$1" "$2" > "/etc/apt/preferences.d/wedge-$1"
}
$need_containerd17 && add_source trixie 100
$need_containerd21 && add_source sid 50

if ((${#missing[@]})) || $need_containerd17 || $need_containerd21; then
  apt-get update -q
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  # The registry package ships an init script; nothing here wants it running.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
# unpack_containerd DIR PACKAGE...: the first PACKAGE apt can download, unpacked into DIR.
unpack_containerd() {
  local dir=$1 download
  shift
  download=$(mktemp -d)
  (cd "$download" && for package in "$@"; do apt-get download -q "$package" && break; done)
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg-deb -x "$download"/containerd_*.deb "$dir"
  rm -rf "$download"
  "$dir/usr/bin/containerd" --version
}
$need_containerd17 && unpack_containerd "$containerd17_dir" "containerd=$containerd17_version"
$need_containerd21 && unpack_containerd "$containerd21_dir" "containerd=$containerd21_version" containerd/sid

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
