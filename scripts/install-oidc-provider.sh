#!/usr/bin/env bash
# Installs node-oidc-provider (npm `oidc-provider`, a certified OpenID Provider) into
# <repo>/.tools/oidc-provider (git-ignored) for the single sign-on tests, and prints the folder
# whose node_modules holds it. Idempotent. Needs node (20+) and npm.
#
#   NODE_PATH="$(scripts/install-oidc-provider.sh)/node_modules" node tests/oidc/provider.mjs
set -euo pipefail

VERSION="9.13.3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/oidc-provider"
package="$dest/node_modules/oidc-provider/package.json"

installed() {
  [[ -f "$package" ]] && [[ "$(node -p "require('$package').version" 2>/dev/null)" == "$VERSION" ]]
}

if ! installed; then
  command -v npm >/dev/null || { echo "install-oidc-provider.sh: npm is needed" >&2; exit 1; }
  mkdir -p "$dest"
  exec 9>"$dest/.lock"
  flock 9
  if ! installed; then
    npm install --prefix "$dest" --ignore-scripts --no-audit --no-fund --no-save --loglevel=error \
      "oidc-provider@$VERSION" >&2
    installed || { echo "install-oidc-provider.sh: oidc-provider $VERSION did not install" >&2; exit 1; }
  fi
fi
echo "$dest"
