#!/usr/bin/env bash
# Install everything the reward service needs on a Debian/Ubuntu machine:
# the system packages (through apt-get, when any is missing) and the project with its Python
# dependencies in ./.venv. `--dev` adds the test and code-generation tools.
#
#   bash deploy/install.sh          # to run the service
#   bash deploy/install.sh --dev    # to run the tests too
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
  --dev) extras="[dev]" ;;
  "") ;;
  *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

# python3-venv: the virtual environment; python3-dev and build-essential: Python packages
# without a wheel for this platform, and g++ for C++ submissions; bubblewrap: the code
# sandbox, which runs submissions with the system's /usr/bin/python3; util-linux: setpriv;
# redis-server: the queue of distributed mode (the tests start their own instances).
system_packages=(python3 python3-venv python3-dev build-essential bubblewrap util-linux redis-server)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for package in "${system_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python >= 3.11 is needed; $("$python" --version 2>&1) found (set PYTHON=...)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "installed into .venv ($(.venv/bin/python --version))" >&2
# --dev: helm and kubectl for the Helm chart's tests (deploy/k8s-tools.sh; no cluster needed),
# and verl 0.9.1 for tests/test_verl_integration.py in an environment of its own: verl's
# hydra-core/omegaconf pin antlr4-python3-runtime 4.9.*, math-verify[antlr4_13_2] pins 4.13.2.
# Only this project's client side goes in there (--no-deps); the tests run the service from
# .venv. torch==2.13.0 is the CPU build where one is provided (PIP_FIND_LINKS).
if [ "$extras" = "[dev]" ]; then
  bash deploy/k8s-tools.sh
  # prometheus and promtool for the tests of the shipped dashboard and alerts
  # (tests/test_monitoring.py): taken out of the distribution's prometheus package, which is
  # downloaded, not installed (no service, no service user).
  if [ ! -x .venv/bin/promtool ] || [ ! -x .venv/bin/prometheus ]; then
    work="$(mktemp -d)"
    if (cd "$work" && { apt-get download -qq prometheus 2>/dev/null \
        || { $sudo apt-get update -qq && apt-get download -qq prometheus; }; }); then
      dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb \
        | tar -x -C "$work" ./usr/bin/promtool ./usr/bin/prometheus
      install -m 0755 "$work/usr/bin/promtool" "$work/usr/bin/prometheus" .venv/bin/
      echo "installed prometheus and promtool" \
        "$(.venv/bin/promtool --version 2>&1 | head -1 | cut -d' ' -f3) into .venv/bin" >&2
    else
      echo "no prometheus package to take promtool from: the monitoring tests will skip" >&2
    fi
    rm -rf "$work"
  fi
  [ -x .venv-verl/bin/python ] || "$python" -m venv .venv-verl
  .venv-verl/bin/python -m pip install --quiet --upgrade pip
  .venv-verl/bin/python -m pip install --quiet torch==2.13.0 verl==0.9.1 TransferQueue==0.1.11 \
    cachetools fastapi uvicorn "grpcio>=1.85.1,<2" "protobuf>=7.35.1,<8" "orjson>=3.10"
  .venv-verl/bin/python -m pip install --quiet --no-deps -e .
  echo "installed verl into .venv-verl ($(.venv-verl/bin/python -c 'import verl; print(verl.__version__)'))" >&2
fi
