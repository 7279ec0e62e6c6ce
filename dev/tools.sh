#!/usr/bin/env bash
# The system tools `make test` uses for real, never mocked or skipped (one policy on every machine):
# - espeak-ng and sox: simulated callers and the simulated model speak real generated speech;
# - caddy: deploy/Caddyfile is validated and run in front of the services;
# - prometheus: its promtool checks and unit-tests the alert rules and the scrape configuration;
# - chromium: headless (driven by Playwright, which never downloads a browser) for the dashboard's
#   browser tests and the Grafana dashboard's screenshot;
# - node: checks the dashboard's script parses.
#   dev/tools.sh check     exit 1, naming what is missing and the command that installs it
#   dev/tools.sh install   install what is missing with apt-get (Debian, Ubuntu; root or sudo)
set -euo pipefail
commands=(espeak-ng sox caddy prometheus promtool chromium node)
packages=(espeak-ng sox caddy prometheus prometheus chromium nodejs)
missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk 'NF && !seen[$0]++')
case "${1:-check}" in
  check)
    if [ "${#missing[@]}" -gt 0 ]; then
      echo "make test needs these system packages, missing here: ${missing[*]}" >&2
      echo "install them with:  make tools   (apt-get install -y ${missing[*]})" >&2
      exit 1
    fi ;;
  install)
    [ "${#missing[@]}" -eq 0 ] && exit 0
    sudo=""
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null 2>&1 || { echo "${missing[*]} missing and there is no root or sudo to install them" >&2; exit 1; }
      sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "${missing[*]} missing and there is no apt-get: install them with your package manager" >&2; exit 1; }
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
    exec "$0" check ;;
  *) echo "usage: dev/tools.sh check|install" >&2; exit 2 ;;
esac
