#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads built by envkit, by buildkitd (when one is on
# PATH: Debian has none) and by buildah (Debian's), cold, warm and with the steps rerun,
# medians of $RUNS runs, with each builder's peak RSS, as a markdown table.
#
#   sudo bash benches/side-by-side.sh [RUNS]      (default 3; writes $OUT, default
#                                                  /var/tmp/envkit-bench/results.md)
#   RECORD=1 sudo bash benches/side-by-side.sh    also appends the table to BENCHMARKS.md
#                                                  under a heading with the commit and date
#
# Needs the test environment (scripts/test-env.sh: local registry, base images, test user).
# envkit and buildah run rootless as the test user; buildkitd as root (its OCI worker,
# overlayfs, Debian's runc), an instance of its own started here and driven through an envkit
# buildkitd context (the Definition envkit lowers for a buildkitd).
# Modes:
#   cold   nothing cached: every builder starts from a new, empty store (buildkitd: a new
#          daemon on a new root); the base image is pulled again from the local registry.
#          Nothing is deleted between runs, and the script waits a minute after emptying its
#          work dir: ext4 skips inodes freed in the last 60 s (300 s while their table block is
#          dirty) when it allocates, and a pull right after deleting a few stores measured
#          10 s instead of 1.6 s (the kernel scanning in find_inode_bit/recently_deleted).
#   warm   nothing changed: a fully cached rebuild.
#   warm, pull missing  the same with the base image's tag taken from the store (envkit's
#          --pull missing, which buildkitd gets as image.resolvemode=local; buildah's
#          --pull=false): no registry request. For parallel4's Definition, `solve --pull
#          missing` gives its image sources image.resolvemode=local (what the Go client
#          writes for llb.ResolveModePreferLocal), for envkit and buildkitd alike.
#   rerun  the workload's own steps run again (--no-cache), the base image in the store.
# Workloads:
#   chain20    20 sequential RUN steps on debian:bookworm (envd: 20 `run()` calls).
#   parallel4  4 independent `sleep 1` branches on busybox, joined (envkit and buildkitd: the
#              Go client's golden vector parallel4.pb with default settings; Dockerfile: 4
#              stages copied into one, `--jobs 4`).
#   context    COPY of a context of 2,000 x 4 KiB files + one 100 MiB file (envd: io.copy);
#              cold and rerun rewrite every file first, "1 file" changes one small file.
#   apt        apt-get install jq with the apt cache in cache mounts; cold: empty stores,
#              warm: the step runs again (--no-cache) with the caches filled.
#   python     examples/python-basic: python:3.11-slim, an apt package, a PyPI package
#              (through the host's CA bundle), a file copied in, one run step.
#   dockerfile a two-stage Dockerfile (buildbench's ex01 shape): "1 file" changes a file only
#              the second stage copies, so the first stays cached (envkit: its Dockerfile
#              frontend; buildkitd: envkit's Definition of it; buildah: the Dockerfile).
#   arm64      --platform linux/arm64: apt-get install jq on debian:bookworm-multiarch's arm64
#              image, every step under QEMU (the host's binfmt_misc handler, for all three).
# WORKLOADS="chain20 python" (say) runs only those; arm64 runs only when asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${1:-${RUNS:-3}}
W=${ENVKIT_BENCH_DIR:-/var/tmp/envkit-bench}
OUT=${OUT:-$W/results.md}

# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_setup

# --- workloads -------------------------------------------------------------------------------
mk() { mkdir -p "$W/ctx/$1"; }
mk chain20
{
  echo '# syntax=v1'
  echo 'def build():'
  echo '    base(image="debian:bookworm", dev=False)'
  for i in $(seq 1 20); do echo "    run(commands=[\"echo $i > /f$i\"])"; done
} >"$W/ctx/chain20/build.envd"
{
  echo 'FROM debian:bookworm'
  for i in $(seq 1 20); do echo "RUN echo $i > /f$i"; done
} >"$W/ctx/chain20/Dockerfile"

mk parallel4
cp tests/golden/llb/parallel4.pb "$W/ctx/parallel4/def.pb"
{
  echo 'FROM busybox:latest AS base'
  for i in 1 2 3 4; do
    echo "FROM base AS b$i"
    echo "RUN sleep 1 && echo $i > /p$i"
  done
  echo 'FROM base'
  for i in 1 2 3 4; do echo "COPY --from=b$i /p$i /p$i"; done
} >"$W/ctx/parallel4/Dockerfile"

mk context
cat >"$W/ctx/context/build.envd" <<'EOF'
# syntax=v1
def build():
    base(image="debian:bookworm", dev=False)
    io.copy(source="data", target="/data")
EOF
printf 'FROM debian:bookworm\nCOPY data /data\n' >"$W/ctx/context/Dockerfile"
python3 - "$W/ctx/context/data" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(20):
    os.makedirs(f"{root}/dir{d:02}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/dir{d:02}/f{f:03}.txt", "wb") as fh:
            fh.write(os.urandom(16) + b"x" * (4096 - 16))
with open(f"{root}/big.bin", "wb") as fh:
    for _ in range(100):
        fh.write(os.urandom(1 << 20))
EOF

mk python
cp examples/python-basic/build.envd examples/python-basic/hello.py "$W/ctx/python/"
cat >"$W/ctx/python/Dockerfile" <<'EOF'
FROM python:3.11-slim
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean && apt-get update && \
    apt-get install -y --no-install-recommends curl
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip install six
COPY hello.py /opt/hello.py
ENV GREETING=hi
RUN python3 /opt/hello.py > /opt/hello.out
EOF

mk arm64
# An emulated apt step: the arm64 image of a multi-arch tag, steps under QEMU (each builder
# through the host's binfmt_misc handler; scripts/test-env.sh registers it).
cat >"$W/ctx/arm64/build.envd" <<'EOF'
# syntax=v1
def build():
    base(image="debian:bookworm-multiarch", dev=False)
    install.apt_packages(name=["jq"])
EOF
printf 'FROM debian:bookworm-multiarch\nRUN apt-get update && apt-get install -y jq\n' \
  >"$W/ctx/arm64/Dockerfile"

mk dockerfile
# The shape of buildbench's ex01: two stages; the rebuild changes a file only the second uses.
cat >"$W/ctx/dockerfile/Dockerfile" <<'EOF'
FROM debian:bookworm AS build
WORKDIR /src
COPY a.txt .
RUN for i in $(seq 1 300); do sha256sum a.txt >/dev/null; done && cp a.txt /src/built.txt
FROM debian:bookworm
COPY --from=build /src/built.txt /opt/built.txt
COPY b.txt /opt/b.txt
RUN cat /opt/built.txt /opt/b.txt > /opt/all.txt
EOF
echo "stage one's input" >"$W/ctx/dockerfile/a.txt"
echo "stage two's input" >"$W/ctx/dockerfile/b.txt"

mk apt
cat >"$W/ctx/apt/build.envd" <<'EOF'
# syntax=v1
def build():
    base(image="debian:bookworm", dev=False)
    install.apt_packages(name=["jq"])
EOF
cat >"$W/ctx/apt/Dockerfile" <<'EOF'
FROM debian:bookworm
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean && apt-get update && apt-get install -y jq
EOF
chown -R "$TUSER:$TUSER" "$W"

declare -A RESULT RSS
trap stop_buildkitd EXIT

buildah_fresh() { # a new, empty store; no cache mounts
  COLD_N=$((COLD_N + 1))
  mkdir -p "$W/bah/root-$COLD_N"
  chown "$TUSER:$TUSER" "$W/bah/root-$COLD_N"
  BAH=(buildah --root "$W/bah/root-$COLD_N" --runroot "$W/bah/run" --storage-driver overlay)
  rm -rf /var/tmp/buildah-cache "/var/tmp/buildah-cache-$TUID"
}
buildah_build() {
  local wl=$1 ca=()
  shift
  [ "$wl" = arm64 ] && set -- --platform linux/arm64 "$@"
  # pip goes through the host's TLS-intercepting proxy: its CA bundle over the image's.
  [ "$wl" = python ] && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  timed "${BAH[@]}" "${BAH_BUD[@]}" "${ca[@]}" "$@" -t "$wl-bench" "$W/ctx/$wl"
}

touch_context() { # every file gets new content
  python3 - "$W/ctx/context/data" <<'PY'
import os, sys
for dp, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        with open(os.path.join(dp, f), "r+b") as fh:
            fh.write(os.urandom(16))
PY
  chown -R "$TUSER:$TUSER" "$W/ctx/context/data"
}
touch_one() { # WORKLOAD: one small file changes
  if [ "$1" = dockerfile ]; then
    head -c 8 /dev/urandom | od -An -tx1 >"$W/ctx/dockerfile/b.txt"
    chown "$TUSER:$TUSER" "$W/ctx/dockerfile/b.txt"
  else
    head -c 16 /dev/urandom | dd of="$W/ctx/context/data/dir07/f042.txt" conv=notrunc status=none
  fi
}

pull_missing() { # BUILDER: its flag for "the base image's tag from the store when it has it"
  case $1 in
    buildah) echo --pull=false ;; # only pulled when not in its store (buildah 1.28)
    *) echo --pull missing ;;       # envkit's; buildkitd gets image.resolvemode=local
  esac
}

bench_builder() { # NAME
  local b=$1 wl i t cold warm rerun one
  echo "== $b" >&2
  for wl in ${WORKLOADS:-chain20 parallel4 context apt python dockerfile}; do
    cold=() warm=() rerun=() one=()
    for i in $(seq 1 "$RUNS"); do
      [ "$wl" = context ] && touch_context
      "${b}_fresh"
      # The previous run's writes are on disk before this one starts: otherwise each cold
      # run pays for the writeback of the one before it (the first builder's first run none).
      sync
      t=$("${b}_build" "$wl")
      note_rss "$b"
      cold+=("$t")
    done
    record "$b" "$wl" cold "${cold[@]}"
    for i in $(seq 1 "$RUNS"); do
      if [ "$wl" = apt ]; then
        t=$("${b}_build" "$wl" --no-cache) # the step again, caches warm
      else
        t=$("${b}_build" "$wl")
      fi
      note_rss "$b"
      warm+=("$t")
    done
    record "$b" "$wl" warm "${warm[@]}"
    if [ "$wl" != apt ]; then
      # The same rebuild with the base image's tag taken from the store (no registry
      # request).
      local pm=()
      for i in $(seq 1 "$RUNS"); do
        t=$("${b}_build" "$wl" $(pull_missing "$b"))
        pm+=("$t")
      done
      record "$b" "$wl" "warm, pull missing" "${pm[@]}"
    fi
    if [ "$wl" != apt ]; then
      for i in $(seq 1 "$RUNS"); do
        [ "$wl" = context ] && touch_context
        t=$("${b}_build" "$wl" --no-cache)
        note_rss "$b"
        rerun+=("$t")
      done
      record "$b" "$wl" rerun "${rerun[@]}"
    fi
    if [ "$wl" = context ] || [ "$wl" = dockerfile ]; then
      for i in $(seq 1 "$RUNS"); do
        touch_one "$wl"
        sync # as before a cold run: no run pays for the writeback of the one before
        t=$("${b}_build" "$wl")
        one+=("$t")
      done
      record "$b" "$wl" "1 file" "${one[@]}"
    fi
  done
}

BUILDERS=(envkit)
bench_builder envkit
if command -v buildkitd >/dev/null && command -v buildctl >/dev/null; then
  start_buildkitd
  BUILDERS+=(buildkitd)
  bench_builder buildkitd
  stop_buildkitd
  RSS[buildkitd]=$BKD_HWM
else
  echo "buildkitd: not run (no buildkitd and buildctl on PATH)" >&2
fi
if command -v buildah >/dev/null; then
  BUILDERS+=(buildah)
  bench_builder buildah
fi

# --- table -----------------------------------------------------------------------------------
{
  header="| workload | mode |"
  for b in "${BUILDERS[@]}"; do header+=" $b |"; done
  echo "$header envkit / best peer |"
  printf '|---|---|'
  for _ in "${BUILDERS[@]}"; do printf -- '---:|'; done
  echo '---:|'
  for key in "chain20|cold" "chain20|warm" "chain20|warm, pull missing" "chain20|rerun" \
             "parallel4|cold" "parallel4|warm" "parallel4|warm, pull missing" "parallel4|rerun" \
             "context|cold" "context|warm" "context|warm, pull missing" "context|rerun" \
             "context|1 file" "apt|cold" "apt|warm" \
             "python|cold" "python|warm" "python|warm, pull missing" "python|rerun" \
             "dockerfile|cold" "dockerfile|warm" "dockerfile|warm, pull missing" \
             "dockerfile|rerun" "dockerfile|1 file" \
             "arm64|cold" "arm64|warm" "arm64|warm, pull missing" "arm64|rerun"; do
    [ -n "${RESULT["envkit|${key%%|*}|${key#*|}"]:-}" ] || continue
    wl=${key%%|*}
    mode=${key#*|}
    row="| $wl | $mode |"
    best=""
    for b in "${BUILDERS[@]}"; do
      v=${RESULT["$b|$wl|$mode"]:-}
      row+=" ${v:-–} s |"
      if [ "$b" != envkit ] && [ -n "$v" ]; then
        best=$(python3 -c "a='$best'; print(min(float(a), $v) if a else $v)")
      fi
    done
    ratio="–"
    if [ -n "$best" ]; then
      ratio=$(python3 -c "print(f'{${RESULT["envkit|$wl|$mode"]} / $best:.2f}x')")
    fi
    echo "$row $ratio |"
  done
  row="| peak RSS | all runs |"
  for b in "${BUILDERS[@]}"; do row+=" $(( ${RSS[$b]:-0} / 1024 )) MiB |"; done
  echo "$row |"
  echo
  echo "Peak RSS: the envkit process itself (its helpers and the steps' processes are separate)," \
       "the buildkitd daemons (the largest; a new one for each cold run), the buildah process."
  command -v buildkitd >/dev/null || echo "buildkitd: not run (none on PATH)."
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr);" \
       "envkit $(git -C "$REPO" rev-parse --short HEAD) (release, scripts/release.sh);" \
       "$(buildkitd --version 2>/dev/null | head -1);" \
       "$(buildah --version 2>/dev/null | head -1); medians of $RUNS runs."
} | tee "$OUT"

if [ "${RECORD:-0}" = 1 ]; then
  {
    echo
    echo "## Side by side at $(git -C "$REPO" rev-parse --short HEAD) ($(date -u +%Y-%m-%d)," \
         "\`WORKLOADS=\"${WORKLOADS:-chain20 parallel4 context apt python dockerfile}\"" \
         "bash benches/side-by-side.sh $RUNS\`)"
    echo
    cat "$OUT"
  } >>"$REPO/BENCHMARKS.md"
fi
