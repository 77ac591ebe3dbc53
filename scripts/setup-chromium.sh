#!/usr/bin/env bash
# Debian's headless Chromium for the browser login test (tests/test_auth_browser.py). Test tools
# may not download their own browsers here, so we use the distribution's. Without root or apt the
# test skips with a reason instead.
set -uo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test…"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    && exit 0
fi
echo "warning: /usr/bin/chromium is not available; the browser login test will be skipped" >&2
exit 0
