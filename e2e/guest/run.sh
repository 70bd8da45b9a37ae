#!/bin/bash
# Runs inside the systemd + cgroup v2 guest (see e2e/src/guest.rs), once per boot: installs
# Wedge with `wedge node install`, then for each cgroup driver (runc's SystemdCgroup and so
# Wedge's engine config) runs a CRI pod with pause + busybox sidecar + wasm container and
# checks limits, placement, stats, pause/resume, update, OOM and cleanup. Prints `ok DRIVER
# CHECK` or `FAIL DRIVER CHECK: why` per check; the host test reads them.
set -u
share=/mnt/wedge
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
driver=setup
ok() { echo "ok $driver $1"; }
fail() {
  echo "FAIL $driver $1: $2"
  echo "--- containerd's journal, last lines:"
  journalctl -u containerd --no-pager -n 25 -o cat 2>&1 | sed 's/^/    /'
  echo "--- runtime processes and where they wait:"
  ps -eo pid,ppid,stat,wchan:30,args | grep -E 'runc|shim|pause|sleep' | grep -v grep | sed 's/^/    /'
}
# check NAME COMMAND...: ok when the command succeeds, else FAIL with what it printed.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(echo "$out" | tr '\n' ' ')"; fi
}
crictl() {
  command crictl --runtime-endpoint unix:///run/containerd/containerd.sock --timeout 300s "$@" \
    2> >(grep -v 'crictl.yaml' >&2)
}
equals() { [ "$1" = "$2" ] || { echo "expected '$2', found '$1'"; return 1; }; }
wait_for() { # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "timed out: $*"; return 1; }
    sleep 1
  done
}
state_of() { crictl inspect -o go-template --template '{{.status.state}}' "$1"; }
exited() { equals "$(state_of "$1")" CONTAINER_EXITED; }
cgroup_of() { # the cgroup v2 directory of a process
  echo "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$1/cgroup")"
}
runner_pid() { crictl inspect -o go-template --template '{{.info.pid}}' "$1"; }
export -f crictl equals state_of exited

echo "guest: $(uname -r), PID 1 $(cat /proc/1/comm), $(stat -fc %T /sys/fs/cgroup)"
install -m 0755 "$share/crictl" /usr/local/bin/crictl
install -m 0755 "$share/wedge" /usr/local/bin/wedge
mkdir -p /etc/cni/net.d
cat > /etc/cni/net.d/10-guest.conflist <<'CNI'
{"cniVersion": "0.4.0", "name": "guest", "plugins": [{"type": "bridge", "bridge": "cni0",
 "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}}]}
CNI

for driver in systemd cgroupfs; do
  systemd_cgroup=false
  [ "$driver" = systemd ] && systemd_cgroup=true
  # A node whose runc follows $driver; the installer registers Wedge and copies the driver.
  cat > /etc/containerd/config.toml <<CONF
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "wedge.test/pause:latest"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = $systemd_cgroup
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
CONF
  rm -f /etc/wedge/config.toml /etc/containerd/config.toml.wedge-backup
  # The installer restarts containerd itself, through systemd, in PID 1's namespaces.
  before=$(systemctl show --property=InvocationID --value containerd)
  check install wedge node install --shim-source "$share/containerd-shim-wedge-v1" \
    --shim-dest /usr/local/bin --engine-config "$share/engine.toml" --restart auto
  check engine-config-driver grep -q "driver = \"$driver\"" /etc/wedge/config.toml
  check restarted-by-installer test "$(systemctl show --property=InvocationID --value containerd)" != "$before"
  check containerd-up wait_for 120 crictl info
  for image in "$share"/images/*.tar; do
    ctr -n k8s.io images import --all-platforms "$image" >/dev/null || fail import "$image"
  done

  if [ "$driver" = systemd ]; then parent=kubepods-wedge.slice; else parent=/kubepods/wedge; fi
  cat > /tmp/pod.json <<POD
{"metadata": {"name": "guest-$driver", "namespace": "default", "uid": "guest-$driver"},
 "log_directory": "/tmp/pod-logs-$driver", "linux": {"cgroup_parent": "$parent"}}
POD
  cat > /tmp/sidecar.json <<CTR
{"metadata": {"name": "sidecar"}, "image": {"image": "wedge.test/busybox:latest"},
 "command": ["/bin/busybox", "sleep", "3600"], "log_path": "sidecar.log",
 "linux": {"resources": {"memory_limit_in_bytes": 33554432}}}
CTR
  cat > /tmp/wasm.json <<CTR
{"metadata": {"name": "spin"}, "image": {"image": "wedge.test/spin:latest"},
 "log_path": "spin.log",
 "linux": {"resources": {"memory_limit_in_bytes": 67108864, "cpu_period": 100000,
  "cpu_quota": 50000}}}
CTR
  cat > /tmp/oom.json <<CTR
{"metadata": {"name": "memories"}, "image": {"image": "wedge.test/memories:latest"},
 "log_path": "memories.log", "annotations": {"wedge.dev/features": "multi-memory"},
 "linux": {"resources": {"memory_limit_in_bytes": 67108864}}}
CTR
  # The reference: the same pod on runc's own shim.
  sed "s/guest-$driver/reference-$driver/g" /tmp/pod.json > /tmp/reference-pod.json
  if reference=$(crictl runp --runtime runc /tmp/reference-pod.json); then
    ok reference-runp
    crictl stopp "$reference" >/dev/null && crictl rmp "$reference" >/dev/null
  else
    fail reference-runp "$reference"
  fi
  # A hang is looked at while it still hangs.
  crictl runp --runtime wedge /tmp/pod.json > /tmp/runp.out 2>&1 &
  runp=$!
  for _ in $(seq 120); do kill -0 $runp 2>/dev/null || break; sleep 1; done
  if kill -0 $runp 2>/dev/null; then
    echo "--- RunPodSandbox still waiting after 120 s; runtime processes:"
    ps -eo pid,ppid,stat,wchan:30,args | grep -E 'runc|shim|pause|sleep|busybox' | grep -v grep | sed 's/^/    /'
    for pid in $(pgrep -f 'runc'); do
      echo "    $pid stack: $(head -6 /proc/$pid/stack 2>/dev/null | tr '\n' ' ')"
      echo "    $pid fds: $(ls -l /proc/$pid/fd 2>/dev/null | awk '{print $9 $10 $11}' | tr '\n' ' ')"
    done
  fi
  wait $runp
  status=$?
  pod=$(grep -v crictl.yaml /tmp/runp.out)
  [ $status -eq 0 ] || { fail runp "$pod"; continue; }
  ok runp
  sidecar=$(crictl create "$pod" /tmp/sidecar.json /tmp/pod.json) && crictl start "$sidecar" >/dev/null \
    && ok sidecar || fail sidecar "$sidecar"
  wasm=$(crictl create "$pod" /tmp/wasm.json /tmp/pod.json) && crictl start "$wasm" >/dev/null \
    && ok wasm-start || fail wasm-start "$wasm"
  check wasm-running wait_for 120 bash -c "equals \"\$(state_of $wasm)\" CONTAINER_RUNNING"

  pid=$(runner_pid "$wasm")
  cg=$(cgroup_of "$pid")
  echo "guest: $driver wasm runner $pid in $cg; sidecar in $(cgroup_of "$(runner_pid "$sidecar")")"
  if [ "$driver" = systemd ]; then
    want_dir=/sys/fs/cgroup/kubepods.slice/kubepods-wedge.slice/cri-containerd-$wasm.scope
  else
    want_dir=/sys/fs/cgroup/kubepods/wedge/$wasm
  fi
  check placement equals "$cg" "$want_dir"
  check sidecar-beside equals "$(dirname "$(cgroup_of "$(runner_pid "$sidecar")")")" "$(dirname "$want_dir")"
  check memory-limit equals "$(cat "$cg/memory.max")" 67108864
  check cpu-limit equals "$(cat "$cg/cpu.max")" "50000 100000"
  check stats bash -c "crictl stats -o json $wasm | grep -q '\"workingSetBytes\"'"
  check pause ctr -n k8s.io tasks pause "$wasm"
  check frozen wait_for 10 grep -q '^frozen 1' "$cg/cgroup.events"
  check resume ctr -n k8s.io tasks resume "$wasm"
  check thawed wait_for 10 grep -q '^frozen 0' "$cg/cgroup.events"
  check update crictl update --memory 134217728 "$wasm"
  check updated-limit equals "$(cat "$cg/memory.max")" 134217728

  oom=$(crictl create "$pod" /tmp/oom.json /tmp/pod.json) && crictl start "$oom" >/dev/null \
    && ok oom-start || fail oom-start "$oom"
  check oom-exit wait_for 120 exited "$oom"
  check oom-reason equals "$(crictl inspect -o go-template --template '{{.status.reason}} {{.status.exitCode}}' "$oom")" "OOMKilled 137"

  check stop crictl stopp "$pod"
  check remove crictl rmp "$pod"
  check cgroups-gone wait_for 10 bash -c "! [ -e $want_dir ] && ! find $(dirname "$want_dir") -mindepth 1 -type d 2>/dev/null | grep -q ."
  check no-runners bash -c "! pgrep -f '[w]edge-runner'"
  check no-shims wait_for 10 bash -c "! pgrep -f '[c]ontainerd-shim-wedge'"
  check uninstall wedge node uninstall --shim-dest /usr/local/bin --engine-config "$share/engine.toml" --restart never
done
echo "guest: done"
# Straight to power-off: systemd's orderly shutdown has been seen to stall here after the
# pods' mounts and the 9p share; the results are written and synced by now.
sync
echo o > /proc/sysrq-trigger
