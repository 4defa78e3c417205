#!/usr/bin/env bash
# Creates state/example-repo: a local git repo holding the bundled example service,
# which deployer.toml follows as source "example". Does nothing if it already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=${1:-state/example-repo}
if [ -d "$repo/.git" ]; then
  exit 0
fi
mkdir -p "$repo"
cp -R manifests/examples/text-classify/. "$repo/"
git -C "$repo" init --quiet --initial-branch=main
git -C "$repo" add -A
git -C "$repo" -c user.name=deployer -c user.email=deployer@localhost commit --quiet -m "example service"
echo "created $repo (edit it and commit: deployer polls it every minute)"
