#!/usr/bin/env bash
# Builds the container image without a registry and proves it starts.
#
#   scripts/image.sh                 # build release, assemble .image/rootfs,
#                                    # podman build, then run --version and a
#                                    # short serve + /healthz from the image
#   scripts/image.sh --rootfs-only BINARY DIR
#                                    # only assemble a root filesystem (used
#                                    # inside the Containerfile's build stage)
#
# The root filesystem is the stripped binary, the shared libraries `ldd`
# names (glibc, libgcc), and /etc/passwd and /etc/group with the user
# spreekkamer (10001). Running the image: `podman run` where the machine
# allows containers; otherwise (some sandboxes refuse to run them) the
# image's own root filesystem is mounted (`podman image mount`) and the same
# checks run in it with chroot — the files tested are the image's files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

assemble() {
  local bin=$1 root=$2
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$bin" "$root/usr/local/bin/spreekkamer"
  strip --strip-debug "$root/usr/local/bin/spreekkamer" 2>/dev/null || true
  local lib
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/:/nonexistent\nspreekkamer:x:10001:10001:spreekkamer:/:/nonexistent\n' > "$root/etc/passwd"
  printf 'root:x:0:\nspreekkamer:x:10001:\n' > "$root/etc/group"
}

if [[ ${1:-} == --rootfs-only ]]; then
  assemble "$2" "$3"
  exit 0
fi

TAG=${SPREEKKAMER_IMAGE_TAG:-localhost/spreekkamer:test}
command -v podman >/dev/null || { echo "image.sh: podman is missing (apt-get install podman)" >&2; exit 1; }
cargo build --release --bin spreekkamer
assemble target/release/spreekkamer .image/rootfs
echo "root filesystem: $(du -sh .image/rootfs | cut -f1)"
podman build --quiet --build-arg BUILD=prebuilt -t "$TAG" -f Containerfile .
podman image inspect "$TAG" --format 'image {{.Id}}: user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}, {{.Size}} bytes'
[[ $(podman image inspect "$TAG" --format '{{.Config.User}}') == 10001:10001 ]] || { echo "image.sh: the image must run as 10001" >&2; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
healthz() {
  local i
  for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

if podman run --rm --network=none "$TAG" --version > .image/version.txt 2> .image/run.err; then
  echo "podman run: $(cat .image/version.txt)"
  cid=$(podman run -d --rm --network=host "$TAG" serve --listen "127.0.0.1:$PORT" --demo-links=false)
  trap 'podman rm -f "$cid" >/dev/null 2>&1 || true' EXIT
  healthz || { podman logs "$cid" >&2; echo "image.sh: /healthz did not answer from the container" >&2; exit 1; }
  echo "podman run: serve answered /healthz on 127.0.0.1:$PORT"
else
  echo "podman run refused here ($(head -c 300 .image/run.err | tr '\n' ' ')); checking the image's root filesystem with chroot"
  mnt=$(podman image mount "$TAG")
  trap 'kill "${pid:-0}" 2>/dev/null || true; podman image unmount "$TAG" >/dev/null 2>&1 || true' EXIT
  [[ -x $mnt/usr/local/bin/spreekkamer ]] || { echo "image.sh: no binary in the image" >&2; exit 1; }
  echo "chroot: $(chroot --userspec=10001:10001 "$mnt" /usr/local/bin/spreekkamer --version)"
  chroot --userspec=10001:10001 "$mnt" /usr/local/bin/spreekkamer serve --listen "127.0.0.1:$PORT" --demo-links=false > .image/serve.log 2>&1 &
  pid=$!
  healthz || { cat .image/serve.log >&2; echo "image.sh: /healthz did not answer from the image's root filesystem" >&2; exit 1; }
  echo "chroot: serve from the image answered /healthz on 127.0.0.1:$PORT"
fi
echo "image: ok"
