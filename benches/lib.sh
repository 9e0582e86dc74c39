# Shared by the benchmark scripts (sourced, not run): the test environment, a release build
# of envkit, envkit's and buildah's registry configs, and helpers that time commands run as
# the unprivileged test user. Set W (the work dir, emptied) before calling bench_setup.

bench_setup() {
  env_out=$(bash scripts/test-env.sh)
  eval "$(grep -E '^ENVKIT_TEST_(REGISTRY|USER)=' <<<"$env_out")"
  REG=$ENVKIT_TEST_REGISTRY
  TUSER=$ENVKIT_TEST_USER
  TUID=$(id -u "$TUSER")
  # The timer (hwm.py) runs as the test user on Debian's python3.
  [ -x /usr/bin/python3 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/envkit-target}
  # The binary as it is installed (scripts/release.sh: static, against musl where it can).
  ENVKIT=$(bash scripts/release.sh build 2>/dev/null || bash scripts/release.sh build)
  chmod 0755 "$CARGO_TARGET_DIR" "$(dirname "$(dirname "$ENVKIT")")" "$(dirname "$ENVKIT")"

  if [ -e "$W" ]; then
    # See side-by-side.sh ("cold"): files created right after many were deleted cost the
    # kernel far more; let ext4's window for freshly freed inodes pass.
    rm -rf "$W"
    sync
    echo "waiting 65 s after deleting the previous run's stores" >&2
    sleep 65
  fi
  mkdir -p "$W"/{envkit-root,bah/root,bah/run,run,ctx}
  # Timed from a copy, as an install copies it: the same bytes ran a warm parallel4 in 3.0 ms
  # from a build output that had sat in the page cache for half an hour (on this VM, DAMON
  # pages out the page cache of files no process maps, and what is read back costs more to
  # map) and in 2.05 ms from a fresh copy.
  install -m 0755 "$ENVKIT" "$W/envkit"
  ENVKIT=$W/envkit
  RUNDIR=/tmp/envkit-run-$TUID
  mkdir -p "$RUNDIR"
  chown "$TUSER" "$RUNDIR"

  cat >"$W/envkit.toml" <<EOF
[registry."docker.io"]
mirrors = ["$REG"]

[registry."$REG"]
http = true
EOF
  if [ "$REG" != "127.0.0.1:5000" ]; then
    printf '\n[registry."127.0.0.1:5000"]\nmirrors = ["%s"]\nhttp = true\n' "$REG" >>"$W/envkit.toml"
  fi
  printf '\n[worker]\nca-bundle = "/etc/ssl/certs/ca-certificates.crt"\n' >>"$W/envkit.toml"
  cat >"$W/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "$REG"
insecure = true
EOF

  # Runs a command; writes its wall time in seconds (from its start to its exit, timed here so
  # that runuser and this script's own start are not counted) to $W/elapsed, and its own peak
  # RSS (VmHWM, KiB, polled every 5 ms from 5 ms on; the step processes it starts are not
  # counted) to $W/rss. The timer forks nothing while the command runs: a shell poller (a
  # subshell, and `sleep` every 5 ms) took ~0.3-0.5 ms of a 3 ms run on two cores.
  cat >"$W/hwm.py" <<'EOF'
import os, select, shutil, sys, time

out = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
path = shutil.which(argv[0]) or argv[0]
peak = 0
t0 = time.time()
pid = os.posix_spawn(path, argv, os.environ)
exited = select.poll()
exited.register(os.pidfd_open(pid), select.POLLIN)
# Every 5 ms until the command exits (the first look after 5 ms: a short command runs
# undisturbed), its peak RSS so far.
while not exited.poll(5):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
                    break
    except (OSError, ValueError):
        pass
t1 = time.time()
_, status = os.waitpid(pid, 0)
with open(os.path.join(out, "elapsed"), "w") as f:
    f.write(f"{t1 - t0:.4f}\n")
with open(os.path.join(out, "rss"), "w") as f:
    f.write(f"{peak}\n")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
EOF
  BAH=(buildah --root "$W/bah/root" --runroot "$W/bah/run" --storage-driver overlay)
  BAH_BUD=(bud --runtime runc --network host --layers --jobs 4)
}

as_user() {
  runuser -u "$TUSER" -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$W" USER="$TUSER" XDG_RUNTIME_DIR="$RUNDIR" \
    ENVKIT_ROOT="${EK_ROOT:-$W/envkit-root}" ENVKIT_CONFIG="$W/envkit.toml" \
    CONTAINERS_REGISTRIES_CONF="$W/registries.conf" "$@"
}

# Seconds (and the command's peak RSS in KiB into $W/rss) of one command as the test user,
# timed by hwm.py around the command itself;
# its output goes to $W/last.log, and a failure stops the benchmark.
timed() {
  if ! as_user /usr/bin/python3 "$W/hwm.py" "$@" >"$W/last.log" 2>&1; then
    echo "FAILED: $*" >&2
    tail -20 "$W/last.log" >&2
    exit 1
  fi
  cat "$W/elapsed"
}

median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.4f}")' "$@"; }

# --- builders: envkit (rootless, a store per cold run) and buildkitd (as root, a daemon per cold
# run, driven through an envkit buildkitd context). The caller declares RESULT and RSS
# (associative arrays) and traps stop_buildkitd on EXIT.
record() { # BUILDER WORKLOAD MODE SECONDS...
  local b=$1 wl=$2 mode=$3
  shift 3
  RESULT["$b|$wl|$mode"]=$(median "$@")
  echo "  $b $wl $mode: $* -> median ${RESULT["$b|$wl|$mode"]}" >&2
}
note_rss() { # BUILDER: the peak RSS of the command just timed (KiB)
  local r
  r=$(cat "$W/rss")
  [ "$r" -gt "${RSS[$1]:-0}" ] && RSS[$1]=$r
  return 0
}

BKD_ROOT=$W/bk
BKD_SOCK=$BKD_ROOT/buildkitd.sock
BKD_PID=
BKD_GEN=0
start_buildkitd() {
  mkdir -p "$BKD_ROOT"
  rm -f "$BKD_SOCK"
  chmod 0755 "$BKD_ROOT"
  cat >"$BKD_ROOT/buildkitd.toml" <<CFG
[worker.oci]
  enabled = true
  gc = false
[worker.containerd]
  enabled = false
[registry."docker.io"]
  mirrors = ["$REG"]
[registry."$REG"]
  http = true
CFG
  setsid buildkitd --config "$BKD_ROOT/buildkitd.toml" --root "$BKD_ROOT/root-$BKD_GEN" \
    --addr "unix://$BKD_SOCK" --group "$(id -gn "$TUSER")" --oci-worker-net host \
    >"$W/buildkitd.log" 2>&1 </dev/null &
  BKD_PID=$!
  for _ in $(seq 300); do
    [ -S "$BKD_SOCK" ] && break
    sleep 0.1
  done
  [ -S "$BKD_SOCK" ] || { tail -20 "$W/buildkitd.log" >&2; echo "buildkitd did not start" >&2; exit 1; }
  [ "$BKD_GEN" -gt 0 ] || as_user "$ENVKIT" context create --name bench-bk --builder buildkitd \
    --endpoint "unix://$BKD_SOCK" >/dev/null
}
BKD_HWM=0
stop_buildkitd() {
  if [ -n "$BKD_PID" ]; then
    # The daemon's own peak (the envkit client's is not the builder's), over every daemon.
    local h
    h=$(awk '/VmHWM/ {print $2}' "/proc/$BKD_PID/status" 2>/dev/null || echo 0)
    [ "${h:-0}" -gt "$BKD_HWM" ] && BKD_HWM=$h
    kill "$BKD_PID" 2>/dev/null || true
    wait "$BKD_PID" 2>/dev/null || true
    BKD_PID=
  fi
}

# Per builder: NAME_build WORKLOAD [extra args] prints seconds; NAME_fresh empties its caches.
COLD_N=0
envkit_fresh() { # a new, empty store
  COLD_N=$((COLD_N + 1))
  EK_ROOT=$W/envkit-cold-$COLD_N
}
envkit_build() {
  local wl=$1
  shift
  [ "$wl" = arm64 ] && set -- --platform linux/arm64 "$@"
  if [ "$wl" = parallel4 ]; then
    timed "$ENVKIT" solve --progress plain -t parallel4:bench "$@" "$W/ctx/parallel4/def.pb"
  else
    timed "$ENVKIT" build --progress plain -p "$W/ctx/$wl" -t "$wl:bench" "$@"
  fi
}
buildkitd_fresh() { # a new daemon on a new, empty root (no prune: see "deleting" above)
  stop_buildkitd
  BKD_GEN=$((BKD_GEN + 1))
  start_buildkitd
}
buildkitd_build() {
  local wl=$1
  shift
  [ "$wl" = arm64 ] && set -- --platform linux/arm64 "$@"
  if [ "$wl" = parallel4 ]; then
    timed "$ENVKIT" --context bench-bk solve --progress plain -t parallel4:bench "$@" \
      "$W/ctx/parallel4/def.pb"
  else
    timed "$ENVKIT" --context bench-bk build --progress plain -p "$W/ctx/$wl" -t "$wl:bench" "$@"
  fi
}
