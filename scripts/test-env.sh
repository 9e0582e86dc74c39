#!/usr/bin/env bash
# envkit's test environment, for a fresh Debian 12 machine. Run as root; idempotent.
#
# It provides what the end-to-end tests need and nothing else:
#   - the Debian packages the tests and the independent checkers use (podman, skopeo, umoci, ...)
#   - an unprivileged user ($ENVKIT_TEST_USER, default envkit-test) with /etc/subuid and /etc/subgid
#   - a Docker registry (Debian's docker-registry) on 127.0.0.1:$ENVKIT_TEST_PORT (default 5000)
#   - base images built offline from the host's own apt mirror, pushed to that registry:
#       library/debian:bookworm      debootstrap --variant=minbase
#       library/python:3.11-slim     minbase + python3, pip, python-is-python3, ca-certificates;
#                                    pip may install globally (no PEP 668 marker), like the official image
#       library/busybox:latest       busybox-static
#       library/busybox:arm64, :multiarch        Debian's arm64 busybox-static; an index of both
#       library/debian:bookworm-arm64, :bookworm-multiarch   the same for debian (debootstrap's
#                                    second stage under QEMU; only where binfmt_misc can be used)
#   - qemu-user-static, and its aarch64 handler registered with binfmt_misc
# Built root filesystems and OCI layouts are cached under $ENVKIT_TEST_ROOT, so a re-run takes seconds.
# On success the last lines are shell assignments: ENVKIT_TEST_REGISTRY=... ENVKIT_TEST_USER=...
set -euo pipefail

CACHE=${ENVKIT_TEST_ROOT:-/var/tmp/envkit-test}
PORT=${ENVKIT_TEST_PORT:-5000}
TUSER=${ENVKIT_TEST_USER:-envkit-test}
REGISTRY=127.0.0.1:$PORT
LOGS=$CACHE/logs
mkdir -p "$CACHE" "$LOGS"

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test-env.sh sets up users, packages and a registry: run it as root" >&2
  exit 1
fi

say() { printf '[test-env] %s\n' "$*" >&2; }

# --- packages --------------------------------------------------------------------------------
packages=(docker-registry debootstrap umoci skopeo busybox-static uidmap podman runc buildah
          jq curl protobuf-compiler fuse-overlayfs slirp4netns ca-certificates git graphviz
          openssh-client apache2-utils containerd docker.io iproute2 openssl qemu-user-static
          musl-tools)
absent=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || absent+=("$p"); done
if ((${#absent[@]})); then
  say "installing ${absent[*]}"
  apt-get update -qq >"$LOGS/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${absent[@]}" \
    >>"$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log" >&2; exit 1; }
fi
# The release binary links musl where the toolchain has its standard library
# (scripts/release.sh); without it (no rustup, or no way to its server) it links glibc.
if command -v rustup >/dev/null; then
  musl=$(rustc -vV | sed -n 's/^host: //p' | sed 's/-gnu$/-musl/')
  case $musl in
    *-musl) rustup target add "$musl" >>"$LOGS/rustup.log" 2>&1 ||
      say "rustup could not add $musl (see $LOGS/rustup.log): the release binary links glibc" ;;
  esac
fi

# --- /dev/net/tun ----------------------------------------------------------------------------
# Build steps get a network of their own behind slirp4netns, which opens /dev/net/tun as the
# user. Stock Debian makes it 0666; some machines (these test hosts) have it 0600 root.
if [ ! -e /dev/net/tun ]; then
  mkdir -p /dev/net
  mknod -m 0666 /dev/net/tun c 10 200
fi
chmod 0666 /dev/net/tun

# --- binfmt_misc ----------------------------------------------------------------------------
# Debian's qemu-user-static registers its handlers (flags POF) where binfmt_misc is mounted when
# it is installed (systemd mounts it at boot); on a machine where it was not, do what a booted
# Debian does. The handler runs arm64 programs for debootstrap's second stage, podman and
# envkit's default mode; envkit's tests also use their own binfmt_misc ([worker] binfmt = "own")
# and none ("off").
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
    say "binfmt_misc cannot be mounted here: no arm64 images"
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  /lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf
fi

# --- the unprivileged user -------------------------------------------------------------------
if ! id "$TUSER" >/dev/null 2>&1; then
  say "creating user $TUSER"
  useradd --create-home --shell /bin/bash "$TUSER"
fi
for f in /etc/subuid /etc/subgid; do
  grep -q "^$TUSER:" "$f" 2>/dev/null || echo "$TUSER:300000:65536" >>"$f"
done
# podman keeps runtime state here; without systemd-logind nobody creates it for us.
uid=$(id -u "$TUSER")
install -d -o "$TUSER" -g "$TUSER" -m 0700 "/tmp/envkit-run-$uid"

# --- the registry ----------------------------------------------------------------------------
mkdir -p "$CACHE/registry"
cat >"$CACHE/registry/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $CACHE/registry/data}, delete: {enabled: true}}
http: {addr: $REGISTRY}
CFG
pid=$(cat "$CACHE/registry/pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  if curl -fsS --noproxy '*' "http://$REGISTRY/v2/" >/dev/null 2>&1; then
    say "a registry we did not start answers on $REGISTRY; using it"
  else
    say "starting docker-registry on $REGISTRY"
    setsid nohup /usr/bin/docker-registry serve "$CACHE/registry/config.yml" \
      >"$LOGS/registry.log" 2>&1 </dev/null &
    echo $! >"$CACHE/registry/pid"
    for _ in $(seq 100); do
      curl -fsS --noproxy '*' "http://$REGISTRY/v2/" >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
fi
curl -fsS --noproxy '*' "http://$REGISTRY/v2/" >/dev/null || { say "registry did not start"; exit 1; }

# A second registry that wants basic auth (htpasswd): pushes and authenticated pulls.
AUTH_PORT=${ENVKIT_TEST_AUTH_PORT:-$((PORT + 1))}
AUTH_REGISTRY=127.0.0.1:$AUTH_PORT
AUTH_CREDS=envkit:envkit-test-secret
mkdir -p "$CACHE/auth-registry"
htpasswd -Bbn "${AUTH_CREDS%%:*}" "${AUTH_CREDS#*:}" >"$CACHE/auth-registry/htpasswd"
cat >"$CACHE/auth-registry/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $CACHE/auth-registry/data}, delete: {enabled: true}}
http: {addr: $AUTH_REGISTRY, secret: envkit-test}
auth: {htpasswd: {realm: envkit-test, path: $CACHE/auth-registry/htpasswd}}
CFG
pid=$(cat "$CACHE/auth-registry/pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  say "starting the authenticating docker-registry on $AUTH_REGISTRY"
  setsid nohup /usr/bin/docker-registry serve "$CACHE/auth-registry/config.yml" \
    >"$LOGS/auth-registry.log" 2>&1 </dev/null &
  echo $! >"$CACHE/auth-registry/pid"
  for _ in $(seq 100); do
    curl -fsS --noproxy '*' -u "$AUTH_CREDS" "http://$AUTH_REGISTRY/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
curl -fsS --noproxy '*' -u "$AUTH_CREDS" "http://$AUTH_REGISTRY/v2/" >/dev/null \
  || { say "the authenticating registry did not start"; exit 1; }

# A containerd on a private socket, for `-o type=containerd`. It runs as root (a fixture), the
# socket belongs to the test user; the CRI plugin is off (it wants a cgroup setup we lack).
CTD=$CACHE/containerd-$PORT
CTD_SOCK=$CTD/containerd.sock
mkdir -p "$CTD"
chmod 0755 "$CTD"
cat >"$CTD/config.toml" <<CFG
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
  uid = $uid
  gid = $(id -g "$TUSER")
[ttrpc]
  address = "$CTD_SOCK.ttrpc"
CFG
pid=$(cat "$CTD/pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  say "starting containerd on $CTD_SOCK"
  rm -f "$CTD_SOCK" "$CTD_SOCK.ttrpc"
  setsid nohup /usr/bin/containerd --config "$CTD/config.toml" \
    >"$LOGS/containerd.log" 2>&1 </dev/null &
  echo $! >"$CTD/pid"
  for _ in $(seq 100); do
    ctr --address "$CTD_SOCK" version >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
ctr --address "$CTD_SOCK" version >/dev/null 2>&1 \
  || { tail -20 "$LOGS/containerd.log" >&2; say "containerd did not start"; exit 1; }

# A dockerd on a private socket, for the remote (dockerd's BuildKit) backend. It runs as root
# (a fixture); the socket's group is the test user's. Docker Hub names go to the local
# registry through dockerd's own mirror setting. Each fixture has a bridge of its own, so
# two test environments on one machine do not fight over docker0; no iptables rules.
DKD=$CACHE/dockerd-$PORT
DKD_SOCK=$DKD/docker.sock
BRIDGE=ekbr$PORT
mkdir -p "$DKD"
chmod 0755 "$DKD"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add name "$BRIDGE" type bridge
  ip addr add "10.$((PORT % 200 + 20)).0.1/24" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
cat >"$DKD/daemon.json" <<CFG
{"registry-mirrors": ["http://$REGISTRY"], "features": {"buildkit": true}}
CFG
pid=$(cat "$DKD/pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
  say "starting dockerd on $DKD_SOCK"
  rm -f "$DKD_SOCK" "$DKD/pid"
  setsid nohup /usr/sbin/dockerd --host "unix://$DKD_SOCK" --group "$(id -gn "$TUSER")" \
    --data-root "$DKD/root" --exec-root "$DKD/exec" --pidfile "$DKD/pid" \
    --config-file "$DKD/daemon.json" --bridge "$BRIDGE" \
    --containerd-namespace "envkit-$PORT" --containerd-plugins-namespace "envkit-$PORT-plugins" \
    >"$LOGS/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 150); do
    curl -fsS --unix-socket "$DKD_SOCK" http://docker/_ping >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
curl -fsS --unix-socket "$DKD_SOCK" http://docker/_ping >/dev/null 2>&1 \
  || { tail -20 "$LOGS/dockerd.log" >&2; say "dockerd did not start"; exit 1; }

# A buildkitd, only when one is on PATH (Debian has no package; GitHub is out of reach here):
# a root fixture on a private unix socket (group: the test user's) and on 127.0.0.1:PORT+3,
# Docker Hub names mirrored to the local registry. Without it ENVKIT_TEST_BUILDKITD stays
# empty and the buildkitd suite reports that it did not run.
BKD_SOCK=
BKD_TCP=
if command -v buildkitd >/dev/null 2>&1; then
  BKD=$CACHE/buildkitd-$PORT
  BKD_SOCK=$BKD/buildkitd.sock
  BKD_TCP=127.0.0.1:$((PORT + 3))
  mkdir -p "$BKD"
  chmod 0755 "$BKD"
  cat >"$BKD/buildkitd.toml" <<CFG
[worker.oci]
  enabled = true
  gc = false
[worker.containerd]
  enabled = false
[registry."docker.io"]
  mirrors = ["$REGISTRY"]
[registry."$REGISTRY"]
  http = true
[registry."$AUTH_REGISTRY"]
  http = true
CFG
  pid=$(cat "$BKD/pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    say "starting $(command -v buildkitd) on $BKD_SOCK and $BKD_TCP"
    rm -f "$BKD_SOCK"
    setsid nohup buildkitd --config "$BKD/buildkitd.toml" --root "$BKD/root" \
      --addr "unix://$BKD_SOCK" --addr "tcp://$BKD_TCP" --group "$(id -gn "$TUSER")" \
      --oci-worker-net host ${ENVKIT_TEST_BUILDKITD_DEBUG:+--debug} >"$LOGS/buildkitd.log" 2>&1 </dev/null &
    echo $! >"$BKD/pid"
    for _ in $(seq 300); do
      [ -S "$BKD_SOCK" ] && break
      sleep 0.1
    done
  fi
  [ -S "$BKD_SOCK" ] || { tail -20 "$LOGS/buildkitd.log" >&2; say "buildkitd did not start"; exit 1; }
else
  say "no buildkitd on PATH: the buildkitd suite will report that it did not run"
fi

# --- base images -----------------------------------------------------------------------------
# The mirror comes from the host's apt configuration: never a hard-coded host.
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { say "cannot find the host's apt mirror"; exit 1; }

bootstrap() { # DIR EXTRA_PACKAGES [ARCH]
  local dir=$1 extra=$2 arch=${3:-}
  [ -f "$dir.ok" ] && return 0
  say "debootstrap $(basename "$dir") from $mirror (takes minutes, cached afterwards)"
  rm -rf "$dir"
  debootstrap --variant=minbase ${arch:+--arch=$arch} ${extra:+--include=$extra} bookworm "$dir" "$mirror" \
    >"$LOGS/$(basename "$dir").log" 2>&1 || { tail -20 "$LOGS/$(basename "$dir").log" >&2; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    >"$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb "$dir"/dev/*
  rm -f "$dir"/usr/lib/python3*/EXTERNALLY-MANAGED
  # Options the host's (snapshot) mirror needs travel with the image, as in a site's own images.
  for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -q 'Check-\(Valid-Until\|Date\)' "$f" && cp "$f" "$dir/etc/apt/apt.conf.d/"
  done
  touch "$dir.ok"
}

publish() { # NAME TAG ROOTFS CMD [ARCH]
  local name=$1 tag=$2 rootfs=$3 cmd=$4 arch=${5:-amd64} layout=$CACHE/oci-$1
  [ "$arch" = amd64 ] || layout=$layout-$arch
  if [ ! -f "$layout/.ok-$tag" ]; then
    rm -rf "$layout"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci insert --image "$layout:$tag" "$rootfs" / >/dev/null
    umoci config --image "$layout:$tag" --os linux --architecture "$arch" \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.cmd "$cmd"
    umoci gc --layout "$layout"
    touch "$layout/.ok-$tag"
  fi
  skopeo copy -q --dest-tls-verify=false "oci:$layout:$tag" "docker://$REGISTRY/library/$name:$tag" >/dev/null
}

bootstrap "$CACHE/rootfs-debian" ""
publish debian bookworm "$CACHE/rootfs-debian" bash
bootstrap "$CACHE/rootfs-python" "python3,python3-pip,python-is-python3,ca-certificates"
publish python 3.11-slim "$CACHE/rootfs-python" python3

if [ ! -x "$CACHE/rootfs-busybox/bin/busybox" ]; then
  rm -rf "$CACHE/rootfs-busybox"
  mkdir -p "$CACHE/rootfs-busybox"/{bin,etc,tmp,root}
  cp /bin/busybox "$CACHE/rootfs-busybox/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$CACHE/rootfs-busybox/bin/$applet"
  done
fi
# Users as busybox's own image has them (the golden vectors chown to `nobody` by name).
bb_passwd='root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n'
if ! printf "$bb_passwd" | cmp -s - "$CACHE/rootfs-busybox/etc/passwd"; then
  printf "$bb_passwd" >"$CACHE/rootfs-busybox/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$CACHE/rootfs-busybox/etc/group"
  rm -f "$CACHE/oci-busybox/.ok-latest"
fi
publish busybox latest "$CACHE/rootfs-busybox" sh
skopeo copy -q --src-tls-verify=false --dest-tls-verify=false --dest-creds "$AUTH_CREDS" \
  "docker://$REGISTRY/library/busybox:latest" "docker://$AUTH_REGISTRY/library/busybox:latest" >/dev/null

# --- another architecture ---------------------------------------------------------------------
multiarch() { # NAME TAG AMD64_TAG ARM64_TAG: one index of the two, pushed as NAME:TAG
  local name=$1 tag=$2 list=envkit-test-$1-$2
  skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/library/$name:$tag" 2>/dev/null |
    grep -q arm64 && return 0
  say "pushing library/$name:$tag (amd64 and arm64)"
  buildah manifest rm "$list" >/dev/null 2>&1 || true
  buildah manifest create "$list" >/dev/null
  for t in "$3" "$4"; do
    buildah manifest add --tls-verify=false "$list" "docker://$REGISTRY/library/$name:$t" >/dev/null
  done
  buildah manifest push -q --tls-verify=false --all "$list" \
    "docker://$REGISTRY/library/$name:$tag" >/dev/null
  buildah manifest rm "$list" >/dev/null
}

# busybox for arm64 (Debian's busybox-static from the same mirror: dpkg learns the arm64
# architecture for it), and library/busybox:multiarch, one tag for amd64 and arm64. Steps for
# arm64 run under QEMU user emulation (qemu-user-static, above).
if [ ! -x "$CACHE/rootfs-busybox-arm64/bin/busybox" ]; then
  say "fetching busybox-static for arm64"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq >>"$LOGS/apt.log" 2>&1
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq busybox-static:arm64 >>"$LOGS/apt.log" 2>&1)
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  rm -rf "$CACHE/rootfs-busybox-arm64"
  # The same applets and users as the amd64 image, with the arm64 binary.
  cp -a "$CACHE/rootfs-busybox" "$CACHE/rootfs-busybox-arm64"
  cp "$tmp/x/bin/busybox" "$CACHE/rootfs-busybox-arm64/bin/busybox"
  rm -rf "$tmp" "$CACHE/oci-busybox-arm64"
fi
publish busybox arm64 "$CACHE/rootfs-busybox-arm64" sh arm64
multiarch busybox multiarch latest arm64

# debian:bookworm for arm64 too (debootstrap's second stage runs under the QEMU handler), and
# library/debian:bookworm-multiarch, one tag for both.
arm64=
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  bootstrap "$CACHE/rootfs-debian-arm64" "" arm64
  publish debian bookworm-arm64 "$CACHE/rootfs-debian-arm64" bash arm64
  multiarch debian bookworm-multiarch bookworm bookworm-arm64
  arm64=1
fi

echo "ENVKIT_TEST_ARM64=$arm64"
echo "ENVKIT_TEST_REGISTRY=$REGISTRY"
echo "ENVKIT_TEST_USER=$TUSER"
echo "ENVKIT_TEST_AUTH_REGISTRY=$AUTH_REGISTRY"
echo "ENVKIT_TEST_AUTH=$AUTH_CREDS"
echo "ENVKIT_TEST_CONTAINERD=$CTD_SOCK"
echo "ENVKIT_TEST_DOCKERD=$DKD_SOCK"
echo "ENVKIT_TEST_BUILDKITD=$BKD_SOCK"
echo "ENVKIT_TEST_BUILDKITD_TCP=$BKD_TCP"
