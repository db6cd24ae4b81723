#!/usr/bin/env bash
# The web page's libraries, from the npm registry at the versions web/package-lock.json pins
# (`npm ci`), copied into the gateway's static/vendor/ (git-ignored; nothing is fetched at run
# time). The page loads them as plain scripts and style sheets from its own origin. axe-core
# stays in web/node_modules/: only the browser test uses it.
#   scripts/build-web.sh [OUT]   OUT defaults to the gateway's static/vendor/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/services/gateway/src/parley_gateway/static/vendor}"
command -v npm >/dev/null || { echo "build-web: npm is missing (Node.js 20 or later)" >&2; exit 1; }
cd "$ROOT/web"
# --ignore-scripts: nothing in the lockfile runs code at install time.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
M=node_modules
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/fonts"
cp "$M/markdown-it/dist/browser/markdown-it.umd.min.js" "$OUT.tmp/markdown-it.min.js"
cp "$M/markdown-it-texmath/texmath.js" "$OUT.tmp/texmath.js"
cp "$M/dompurify/dist/purify.min.js" "$OUT.tmp/purify.min.js"
cp "$M/@highlightjs/cdn-assets/highlight.min.js" "$OUT.tmp/highlight.min.js"
cp "$M/@highlightjs/cdn-assets/styles/github.min.css" "$OUT.tmp/hljs-light.min.css"
cp "$M/@highlightjs/cdn-assets/styles/github-dark.min.css" "$OUT.tmp/hljs-dark.min.css"
cp "$M/katex/dist/katex.min.js" "$OUT.tmp/katex.min.js"
cp "$M/katex/dist/katex.min.css" "$OUT.tmp/katex.min.css"
# woff2 only: every browser the page supports takes it, the CSS lists it first.
cp "$M"/katex/dist/fonts/*.woff2 "$OUT.tmp/fonts/"
# The versions, for the README and for a look at what a running gateway serves.
node -e 'const l=require("./package-lock.json").packages;const v={};for(const[k,p]of Object.entries(l))if(k.startsWith("node_modules/"))v[k.slice(13)]=p.version;console.log(JSON.stringify(v,null,1))' >"$OUT.tmp/versions.json"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "build-web: the page's libraries are in $OUT"
