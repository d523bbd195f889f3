#!/usr/bin/env bash
# Checks the deployment examples in examples/ (run by `make examples-check`):
#
#   my-job.service   `systemd-analyze verify` on a copy whose /usr/local/bin/
#                    paths point at stub executables in a temp dir (verify
#                    insists that ExecStart= binaries exist); any warning it
#                    prints (unknown key, bad value) fails the check
#   my-job.env       VAR=VALUE lines only, every VAR a known variable
#   kubernetes.yaml  parsed with PyYAML: Deployment with 3 replicas, identity
#                    from metadata.name, status on :8080, liveness /healthz and
#                    readiness /readyz on that port, a sane
#                    terminationGracePeriodSeconds, the password file on a
#                    Secret volume, a rollout strategy that does not wait for
#                    non-leaders to become Ready, known variable names
#   Dockerfile       structure: a Debian-based builder stage that installs
#                    musl-tools and protobuf-compiler and builds the musl
#                    release binary, a final `FROM scratch` stage with a
#                    numeric non-root USER and an exec-form ENTRYPOINT
#                    (no Docker engine is needed, or used)
#   haproxy.cfg      `haproxy -c` accepts it; its backend checks /readyz
#   leader-notify.sh, move-vip.sh   `sh -n` (and shellcheck where installed); run
#                    end to end against a real etcd by tests/leader.rs
#
# "Known variable" = an ETCD_AWAIT_ELECTION_* name defined in src/config/.
# Needs: systemd-analyze (systemd), python3 with PyYAML (python3-yaml), haproxy,
# all installed by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
die() {
    printf '\n==> EXAMPLES CHECK FAILED: %s\n\n' "$*" >&2
    exit 1
}

# EXAMPLES_DIR: check another copy (e.g. to try out a change); default examples.
EX="${EXAMPLES_DIR:-examples}"
for f in my-job.service my-job.env kubernetes.yaml Dockerfile haproxy.cfg leader-notify.sh move-vip.sh; do
    [ -f "$EX/$f" ] || die "$EX/$f is missing"
done

# The variables the binary knows (the constants of src/config/), plus the
# two the wrapper sets for its command.
mapfile -t KNOWN_VARS < <(grep -rho '"ETCD_AWAIT_ELECTION_[A-Z_]*"' src/config/ | tr -d '"' | sort -u)
[ "${#KNOWN_VARS[@]}" -ge 10 ] || die "could not read the variable names from src/config/"
export EAE_KNOWN_VARS="${KNOWN_VARS[*]}"

# A python3 that has PyYAML: the one on PATH, else Debian's (python3-yaml).
PYTHON=""
for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' 2>/dev/null; then
        PYTHON="$py"
        break
    fi
done
[ -n "$PYTHON" ] || die "no python3 with PyYAML found (apt-get install python3-yaml; scripts/install-deps.sh does)"

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-examples-check.XXXXXX")"
trap 'rm -rf "$WORKDIR"' EXIT

# ----------------------------------------------------------- systemd unit
say "$EX/my-job.service: systemd-analyze verify"
command -v systemd-analyze >/dev/null 2>&1 ||
    die "systemd-analyze not found (Debian package systemd; scripts/install-deps.sh installs it)"
mkdir "$WORKDIR/bin"
grep -o '/usr/local/bin/[A-Za-z0-9._-]\+' "$EX/my-job.service" | sort -u | while read -r exe; do
    printf '#!/bin/sh\nexit 0\n' >"$WORKDIR/bin/${exe##*/}"
    chmod 0755 "$WORKDIR/bin/${exe##*/}"
done
sed "s|/usr/local/bin/|$WORKDIR/bin/|g" "$EX/my-job.service" >"$WORKDIR/my-job.service"
rc=0
verify_out="$(cd "$WORKDIR" && systemd-analyze verify --man=no ./my-job.service 2>&1)" || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$verify_out" ]; then
    printf '%s\n' "$verify_out" | sed "s|$WORKDIR/bin/|/usr/local/bin/|g; s|^|    |" >&2
    die "systemd-analyze verify reported problems in $EX/my-job.service (exit $rc; output above)"
fi
echo "    ok: systemd-analyze verify is clean"

rc=0
"$PYTHON" - "$EX" <<'PY' || rc=$?
import os, re, sys

ex = sys.argv[1]
known = set(os.environ["EAE_KNOWN_VARS"].split())
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def ok(msg):
    print("    ok: " + msg)


def known_var(name, where):
    if name.startswith("ETCD_AWAIT_ELECTION_"):
        check(name in known, f"{where}: unknown variable {name}")


def section(title):
    print(f"==> {title}")


# --------------------------------------------------------------- unit file
section(f"{ex}/my-job.service: settings")
unit = {}
for line in open(f"{ex}/my-job.service"):
    line = line.strip()
    if line and not line.startswith(("#", ";", "[")):
        key, _, value = line.partition("=")
        unit.setdefault(key, []).append(value)


def unit_has(key, pred, what):
    values = unit.get(key, [])
    if check(any(pred(v) for v in values), f"my-job.service: {what} (have {key}={values})"):
        ok(what)


unit_has("Restart", lambda v: v == "always", "Restart=always")
unit_has("KillMode", lambda v: v == "mixed", "KillMode=mixed (SIGTERM to the wrapper only)")
unit_has("TimeoutStopSec", lambda v: v.isdigit() and 10 <= int(v) <= 600, "TimeoutStopSec between 10 and 600 s")
unit_has("EnvironmentFile", lambda v: v.lstrip("-").endswith(".env"), "EnvironmentFile=*.env")
unit_has("ExecStart", lambda v: v.split()[0].endswith("/etcd-await-election") and len(v.split()) > 1,
         "ExecStart runs the wrapper with a command")
unit_has("LoadCredential", lambda v: ":" in v, "LoadCredential= for the password")
for v in unit.get("Environment", []):
    known_var(v.split("=", 1)[0], "my-job.service Environment=")

# --------------------------------------------------------------- env file
section(f"{ex}/my-job.env: variables")
n = 0
for i, line in enumerate(open(f"{ex}/my-job.env"), 1):
    s = line.strip()
    if not s or s.startswith("#"):
        continue
    m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S*)", s)
    if check(m, f"my-job.env:{i}: not a plain VAR=VALUE line: {s!r}"):
        known_var(m.group(1), f"my-job.env:{i}")
        n += 1
for required in ("ETCD_AWAIT_ELECTION_LOCK_NAME", "ETCD_AWAIT_ELECTION_ENDPOINTS"):
    check(any(l.startswith(required + "=") for l in open(f"{ex}/my-job.env")), f"my-job.env: sets no {required}")
ok(f"{n} settings, all known variables")

# ------------------------------------------------------------- kubernetes
section(f"{ex}/kubernetes.yaml: structure")
import yaml

docs = [d for d in yaml.safe_load_all(open(f"{ex}/kubernetes.yaml")) if d]
kinds = [d.get("kind") for d in docs]
ok(f"parsed {len(docs)} documents: {', '.join(map(str, kinds))}")
for d in docs:
    check(d.get("apiVersion") and d.get("metadata", {}).get("name"), f"kubernetes.yaml: {d.get('kind')} lacks apiVersion/metadata.name")
deps = [d for d in docs if d.get("kind") == "Deployment"]
if check(len(deps) == 1, f"kubernetes.yaml: expected one Deployment, found {len(deps)}"):
    dep = deps[0]
    spec = dep["spec"]
    tmpl = spec["template"]
    pod = tmpl["spec"]
    check(dep.get("apiVersion") == "apps/v1", "Deployment apiVersion is not apps/v1")
    if check(spec.get("replicas") == 3, f"Deployment replicas is {spec.get('replicas')}, expected 3"):
        ok("Deployment with 3 replicas")
    labels = tmpl.get("metadata", {}).get("labels", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    check(sel and all(labels.get(k) == v for k, v in sel.items()), "selector.matchLabels does not match the template labels")
    # Non-leaders are never Ready: a rollout must not wait for them.
    ru = spec.get("strategy", {})
    mu = str(ru.get("rollingUpdate", {}).get("maxUnavailable", ""))
    if check(ru.get("type") == "Recreate" or mu in ("100%", str(spec.get("replicas"))),
             "Deployment strategy: a rolling update waiting for Ready non-leaders never finishes; use Recreate or maxUnavailable: 100%"):
        ok(f"rollout strategy does not wait for non-leaders ({ru.get('type')}, maxUnavailable {mu or '-'})")
    grace = pod.get("terminationGracePeriodSeconds")
    if check(isinstance(grace, int) and 10 <= grace <= 600, f"terminationGracePeriodSeconds {grace!r} not in 10..600"):
        ok(f"terminationGracePeriodSeconds: {grace}")
    containers = pod.get("containers", [])
    check(len(containers) >= 1, "Deployment has no containers")
    c = containers[0]
    env = {e["name"]: e for e in c.get("env", [])}
    for name in env:
        known_var(name, "kubernetes.yaml env")
    for required in ("ETCD_AWAIT_ELECTION_LOCK_NAME", "ETCD_AWAIT_ELECTION_ENDPOINTS"):
        check(env.get(required, {}).get("value"), f"kubernetes.yaml: env {required} has no value")
    ident = env.get("ETCD_AWAIT_ELECTION_IDENTITY", {})
    if check(ident.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
             "ETCD_AWAIT_ELECTION_IDENTITY is not taken from metadata.name"):
        ok("identity from the pod name (fieldRef metadata.name)")
    status = env.get("ETCD_AWAIT_ELECTION_STATUS_ENDPOINT", {}).get("value", "")
    m = re.fullmatch(r"[^:]*:(\d+)", status)
    status_port = int(m.group(1)) if m else None
    check(status_port, f"ETCD_AWAIT_ELECTION_STATUS_ENDPOINT {status!r} is not HOST:PORT or :PORT")
    check(not status.startswith(("127.", "localhost")), "the status endpoint must not be loopback-only: the kubelet probes the pod IP")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    def probe(kind, path):
        p = c.get(kind, {}).get("httpGet", {})
        port = p.get("port")
        port = ports.get(port, port) if isinstance(port, str) else port
        if check(p.get("path") == path and port == status_port,
                 f"{kind}: expected httpGet {path} on port {status_port}, have {p.get('path')} on {port}"):
            ok(f"{kind}: httpGet {path} on port {port} (the status endpoint)")

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")
    # The wrapper must be PID 1 in exec form (signals), running a command.
    cmd = (c.get("command") or []) + (c.get("args") or [])
    check(cmd and cmd[0].endswith("etcd-await-election") and len(cmd) > 1,
          f"container command should be the wrapper followed by the job: {cmd}")
    pwfile = env.get("ETCD_AWAIT_ELECTION_PASSWORD_FILE", {}).get("value")
    if check(pwfile, "ETCD_AWAIT_ELECTION_PASSWORD_FILE is not set"):
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        mount = [m for m in c.get("volumeMounts", []) if pwfile.startswith(m["mountPath"].rstrip("/") + "/")]
        if check(mount and "secret" in vols.get(mount[0]["name"], {}), f"password file {pwfile} is not on a Secret volume"):
            ok(f"password file {pwfile} from Secret {vols[mount[0]['name']]['secret'].get('secretName')}")
            secret = vols[mount[0]["name"]]["secret"]
            key = pwfile[len(mount[0]["mountPath"].rstrip("/")) + 1:]
            for d in docs:
                if d.get("kind") == "Secret" and d["metadata"]["name"] == secret.get("secretName"):
                    check(key in (d.get("stringData") or {}) or key in (d.get("data") or {}),
                          f"Secret {secret.get('secretName')} has no key {key}")
    for svc in (d for d in docs if d.get("kind") == "Service"):
        ssel = svc["spec"].get("selector", {})
        check(ssel and all(labels.get(k) == v for k, v in ssel.items()), f"Service {svc['metadata']['name']} selects no pod of the Deployment")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            check(not isinstance(tp, str) or tp in ports, f"Service targetPort {tp} is not a container port name")

# ------------------------------------------------------------- Dockerfile
section(f"{ex}/Dockerfile: structure")
lines, cur = [], ""
for raw in open(f"{ex}/Dockerfile"):
    s = raw.rstrip("\n")
    if not cur and (not s.strip() or s.lstrip().startswith("#")):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append((cur + s).strip())
    cur = ""
check(not cur, "Dockerfile ends inside a continued line")
stages = []
for l in lines:
    instr, _, rest = l.partition(" ")
    instr = instr.upper()
    if instr == "FROM":
        stages.append({"from": rest.split(), "instr": []})
    elif check(stages, f"Dockerfile: {instr} before the first FROM"):
        stages[-1]["instr"].append((instr, rest.strip()))
if check(len(stages) >= 2, f"Dockerfile: expected a multi-stage build, found {len(stages)} stage(s)"):
    builder, final = stages[0], stages[-1]
    base = builder["from"][0]
    check(base.startswith("rust:") and any(x in base for x in ("bookworm", "bullseye", "trixie", "slim")) or base == "rust",
          f"builder stage should be a Debian-based rust image, is {base}")
    text = " ".join(r for _, r in builder["instr"])
    for pkg in ("musl-tools", "protobuf-compiler"):
        check(pkg in text, f"builder stage does not install {pkg}")
    check(re.search(r"cargo build .*--release", text) and "--target x86_64-unknown-linux-musl" in text
          and "--bin etcd-await-election" in text,
          "builder stage does not run cargo build --release --target x86_64-unknown-linux-musl --bin etcd-await-election")
    copied = []
    for instr, rest in builder["instr"]:
        if instr == "COPY" and not rest.startswith("--"):
            for src in rest.split()[:-1]:
                check(os.path.exists(src), f"Dockerfile COPY source {src} does not exist in the repository")
                copied.append(os.path.normpath(src))
    # Every file the manifest names (bin/test/bench paths, a build script)
    # must be in the build context the builder copies, or cargo fails.
    manifest = open("Cargo.toml").read()
    needed = re.findall(r'^\s*(?:path|build)\s*=\s*"([^"]+)"', manifest, re.M)
    if os.path.exists("build.rs"):
        needed.append("build.rs")
    for f in needed:
        f = os.path.normpath(f)
        check(any(f == c or f.startswith(c + "/") for c in copied),
              f"Cargo.toml needs {f}, which the Dockerfile's builder stage does not COPY")
    ok(f"builder stage FROM {base} installs musl-tools protobuf-compiler, builds the musl release binary")
    if check(final["from"][0] == "scratch", f"final stage is FROM {final['from'][0]}, expected scratch"):
        ok("final stage FROM scratch")
    fi = final["instr"]
    check(any(i == "COPY" and "--from=" in r and "etcd-await-election" in r for i, r in fi), "final stage copies no binary from the builder")
    users = [r for i, r in fi if i == "USER"]
    if check(users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), f"final stage USER must be a numeric non-root id, is {users}"):
        ok(f"USER {users[-1]} (numeric, non-root)")
    eps = [r for i, r in fi if i == "ENTRYPOINT"]
    import json
    try:
        ep = json.loads(eps[-1]) if eps else None
    except ValueError:
        ep = None
    if check(isinstance(ep, list) and ep and ep[0] == "/etcd-await-election",
             f"final stage ENTRYPOINT must be exec form [\"/etcd-await-election\", ...], is {eps}"):
        ok(f"ENTRYPOINT {ep} (exec form: the wrapper is PID 1 and gets the signals)")
    for i, r in fi:
        if i == "ENV":
            for name in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", r):
                known_var(name, "Dockerfile ENV")
    check(not any(i == "RUN" for i, _ in fi), "final stage has RUN, but scratch has no shell")
if problems:
    print("", file=sys.stderr)
    for p in problems:
        print("    PROBLEM: " + p, file=sys.stderr)
    sys.exit(1)
PY
[ "$rc" -eq 0 ] || die "see the problems listed above"

# ----------------------------------------------------------------- haproxy
say "$EX/haproxy.cfg: haproxy -c"
command -v haproxy >/dev/null 2>&1 ||
    die "haproxy not found (Debian package haproxy; scripts/install-deps.sh installs it)"
haproxy_out="$(haproxy -c -f "$EX/haproxy.cfg" 2>&1)" || {
    printf '%s\n' "$haproxy_out" | sed 's/^/    /' >&2
    die "haproxy -c refused $EX/haproxy.cfg (output above)"
}
grep -q 'uri /readyz' "$EX/haproxy.cfg" || die "$EX/haproxy.cfg does not check /readyz"
echo "    ok: haproxy -c accepts it, and it checks /readyz"

# ------------------------------------------------------ leader-notify.sh
for f in leader-notify.sh move-vip.sh; do
    say "$EX/$f: sh -n"
    [ -x "$EX/$f" ] || die "$EX/$f is not executable"
    sh -n "$EX/$f" || die "$EX/$f: syntax error"
    if command -v shellcheck >/dev/null 2>&1; then
        shellcheck -s sh "$EX/$f" || die "shellcheck reported problems in $EX/$f"
    fi
    echo "    ok"
done
say "examples check passed"
