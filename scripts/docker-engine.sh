#!/usr/bin/env bash
# A Docker engine for the tests on a machine without systemd or an image registry.
# Sourced by test/deploy/docker_test.sh; run directly for a shell that uses it:
#
#   bash scripts/docker-engine.sh base-images   # start (if needed), make debian:12(-slim)
#
# docker_engine_up: uses a running engine (DOCKER_HOST, or /var/run/docker.sock) when one
#   answers; otherwise starts Debian's dockerd by hand (there is no systemd) with its data
#   under $LLAMA_POOL_DOCKER_ROOT (default ~/.cache/llama-pool/docker), so images and the
#   layer cache outlive the run, and its own socket, pidfile and log there.
# docker_engine_down: stops that dockerd again if docker_engine_up started it (no orphan).
# docker_base_images: when debian:12 or debian:12-slim is absent and cannot be pulled
#   (no registry is reachable here), makes it with debootstrap from apt's Debian mirror and
#   `docker import`s it. The root file systems are cached as tarballs beside the data.
set -uo pipefail

LLAMA_POOL_DOCKER_ROOT=${LLAMA_POOL_DOCKER_ROOT:-$HOME/.cache/llama-pool/docker}
docker_engine_started=0

docker_say() { echo "docker-engine: $*" >&2; }

# Debian's client (20.10) matches Debian's dockerd; a newer client elsewhere on PATH works
# too, but prefers BuildKit, which the engine here is not set up for.
docker_client() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

docker_engine_up() {
  local docker
  docker=$(docker_client) || { docker_say "no docker client (install docker.io)"; return 1; }
  if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] && "$docker" info >/dev/null 2>&1; then
    docker_say "using the engine at /var/run/docker.sock"
    return 0
  fi
  if [ -n "${DOCKER_HOST:-}" ] && "$docker" info >/dev/null 2>&1; then
    docker_say "using the engine at $DOCKER_HOST"
    return 0
  fi
  command -v dockerd >/dev/null || { docker_say "no dockerd (install docker.io)"; return 1; }
  local root=$LLAMA_POOL_DOCKER_ROOT
  mkdir -p "$root/data" "$root/exec"
  export DOCKER_HOST="unix://$root/docker.sock"
  if [ -f "$root/dockerd.pid" ] && kill -0 "$(cat "$root/dockerd.pid")" 2>/dev/null &&
    "$docker" info >/dev/null 2>&1; then
    docker_say "using the dockerd already running on $root/docker.sock"
    return 0
  fi
  # A dockerd killed hard leaves its pidfile and socket; it refuses to start over them.
  rm -f "$root/dockerd.pid" "$root/docker.sock"
  docker_say "starting dockerd (data $root/data, log $root/dockerd.log)"
  # setsid: the engine does not get the terminal's signals; docker_engine_down stops it.
  setsid dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver overlay2 >>"$root/dockerd.log" 2>&1 </dev/null &
  local pid=$! waited=0
  docker_engine_started=1
  echo "$pid" >"$root/dockerd.started"
  until "$docker" info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge 60 ]; then
      docker_say "dockerd did not come up in ${waited} s; the end of $root/dockerd.log:"
      tail -n 20 "$root/dockerd.log" >&2
      docker_engine_down
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  docker_say "dockerd is up after ${waited} s ($("$docker" info --format '{{.ServerVersion}} {{.Driver}}'))"
}

docker_engine_down() {
  [ "$docker_engine_started" = 1 ] || return 0
  local root=$LLAMA_POOL_DOCKER_ROOT pid waited=0
  pid=$(cat "$root/dockerd.started" 2>/dev/null) || return 0
  docker_say "stopping the dockerd it started (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  # dockerd stops its containerd and containers itself; give it their stop time.
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 30 ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    docker_say "dockerd did not stop in 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$root/dockerd.started"
  docker_engine_started=0
}

# The mirror apt uses on this machine (deb822 or one-line sources), else Debian's CDN.
docker_debian_mirror() {
  local mirror
  mirror=$(grep -hsE '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources | head -n1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror=$(grep -hsE '^deb +(\[[^]]*\] +)?https?://[^ ]+/debian/? +bookworm ' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -n1 | grep -oE 'https?://[^ ]+')
  echo "${mirror:-http://deb.debian.org/debian}"
}

# Makes the debian:12 tarball (debootstrap minbase, Debian's sources and apt settings for
# images) and from it the slim one (no documentation, man pages or locales, now or later).
docker_make_rootfs_tarballs() {
  local root=$LLAMA_POOL_DOCKER_ROOT mirror dir
  mirror=$(docker_debian_mirror)
  command -v debootstrap >/dev/null || { docker_say "no debootstrap (install it)"; return 1; }
  dir=$(mktemp -d "$root/rootfs.XXXXXX")
  docker_say "debootstrap bookworm from $mirror (a few minutes, once per machine)"
  if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$root/debootstrap.log" 2>&1; then
    docker_say "debootstrap failed; the end of $root/debootstrap.log:"
    tail -n 20 "$root/debootstrap.log" >&2
    rm -rf "$dir"
    return 1
  fi
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
  # What Debian's own images set: no package cache kept, no recommends pulled in by habit.
  printf 'APT::Install-Recommends "false";\n' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
    >"$dir/etc/apt/apt.conf.d/docker-clean"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$dir" -cf "$root/debian-12.tar.partial" . &&
    mv "$root/debian-12.tar.partial" "$root/debian-12.tar"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim"
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/*
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  tar --numeric-owner -C "$dir" -cf "$root/debian-12-slim.tar.partial" . &&
    mv "$root/debian-12-slim.tar.partial" "$root/debian-12-slim.tar"
  rm -rf "$dir"
}

docker_base_images() {
  local docker root=$LLAMA_POOL_DOCKER_ROOT image file
  docker=$(docker_client)
  for image in debian:12 debian:12-slim; do
    "$docker" image inspect "$image" >/dev/null 2>&1 && continue
    if timeout 60 "$docker" pull -q "$image" >/dev/null 2>&1; then
      docker_say "pulled $image"
      continue
    fi
    file=$root/${image/:/-}.tar
    [ -f "$file" ] || docker_make_rootfs_tarballs || return 1
    "$docker" import --change 'CMD ["bash"]' "$file" "$image" >/dev/null || return 1
    docker_say "imported $image from $file (made with debootstrap: no registry answered)"
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    base-images)
      docker_engine_up && docker_base_images
      rc=$?
      docker_engine_down
      exit $rc
      ;;
    *)
      echo "usage: $0 base-images" >&2
      exit 2
      ;;
  esac
fi
