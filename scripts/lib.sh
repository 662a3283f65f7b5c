# shellcheck shell=bash
# Sourced by scripts/run, scripts/test and the CI steps: install the Debian
# packages a step needs when they are missing, and say which and why.
# Idempotent: a machine that has everything installs nothing.

# Run as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "ssegate: need root to run: $*  (no sudo here; run it as root, then try again)" >&2
    return 1
  fi
}

_apt_updated=
# apt_install WHY PACKAGE...: install PACKAGEs (only those not installed yet).
apt_install() {
  local why=$1
  shift
  [ $# -gt 0 ] || return 0
  if ! command -v apt-get >/dev/null; then
    echo "ssegate: missing $* ($why) and no apt-get here: install them with your package manager" >&2
    return 1
  fi
  echo "ssegate: installing $* ($why)" >&2
  if [ -z "$_apt_updated" ]; then
    as_root apt-get update -qq
    _apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need_rust: a Rust toolchain is the one thing these scripts do not install.
need_rust() {
  if ! command -v cargo >/dev/null; then
    echo "ssegate: no cargo on PATH: install Rust with rustup (https://rustup.rs), then try again" >&2
    echo "         (Debian's own rustc is too old for pingora)" >&2
    return 1
  fi
}

# ensure_build_deps: what building ssegate needs besides Rust. pingora-core
# always builds zlib-ng through flate2's `zlib-ng` feature, and libz-ng-sys
# builds it only with cmake (and make); no feature of ours turns that off.
ensure_build_deps() {
  need_rust
  local need=()
  command -v cmake >/dev/null || need+=(cmake)
  command -v make >/dev/null || need+=(make)
  command -v cc >/dev/null || need+=(gcc)
  apt_install "to build pingora's zlib-ng" "${need[@]}"
}

# ensure_test_deps: what scripts/test needs besides the build.
ensure_test_deps() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)     # tests/cluster.rs
  command -v chromium >/dev/null || need+=(chromium)             # tests/browser.rs
  # tests/grip.rs and tests/publish.rs run Pushpin's Python library from a venv
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  type -P kill >/dev/null || need+=(procps)                     # /bin/kill signals the gateway
  command -v node >/dev/null || need+=(nodejs)                   # tests/record.rs: Node's eventsource
  command -v npm >/dev/null || need+=(npm)
  apt_install "for the integration tests" "${need[@]}"
}
