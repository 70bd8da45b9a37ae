#!/usr/bin/env bash
# Installs what building and testing Wedge needs on Debian: containerd and runc (the real
# parts the tests run against), clang + wasi-libc (WASI test programs in C), a static busybox
# (the runc reference in benchmarks), protoc (containerd's API bindings), a registry
# (docker-registry, for push/pull tests), CNI plugins + iptables (pod networking in the CRI
# tests) and, beside the system containerd 1.6, containerd
# 1.7 from Debian trixie unpacked under /opt/wedge-test (wasm-layer images need >= 1.7.7).
# Skips apt entirely when everything is there.
set -euo pipefail

packages=(containerd runc clang lld wasi-libc libclang-rt-14-dev-wasm32 busybox-static
  protobuf-compiler docker-registry containernetworking-plugins iptables)
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

if $need_containerd21 && ! grep -rqs "Suites: sid" /etc/apt/sources.list.d/; then
  # sid pinned lower still: only the download below takes anything from it.
  cat > /etc/apt/sources.list.d/wedge-sid.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat > /etc/apt/preferences.d/wedge-sid <<'PIN'
Package: *
Pin: release n=sid
Pin-Priority: 50
PIN
fi

if $need_containerd17; then
  # trixie as a low-priority source: nothing installed moves, only the download below uses it.
  if ! grep -rqs "Suites: trixie" /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/wedge-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat > /etc/apt/preferences.d/wedge-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  fi
fi

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
if $need_containerd17; then
  download=$(mktemp -d)
  (cd "$download" && apt-get download -q "containerd=$containerd17_version")
  rm -rf "$containerd17_dir" && mkdir -p "$containerd17_dir"
  dpkg-deb -x "$download"/containerd_*.deb "$containerd17_dir"
  rm -rf "$download"
  "$containerd17_dir/usr/bin/containerd" --version
fi
if $need_containerd21; then
  download=$(mktemp -d)
  (cd "$download" && { apt-get download -q "containerd=$containerd21_version" \
    || apt-get download -q containerd/sid; })
  rm -rf "$containerd21_dir" && mkdir -p "$containerd21_dir"
  dpkg-deb -x "$download"/containerd_*.deb "$containerd21_dir"
  rm -rf "$download"
  "$containerd21_dir/usr/bin/containerd" --version
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
