#!/bin/sh
# punchd installer, served by the signal server at GET /install.sh:
#   curl -fsSL SERVER/install.sh | sudo sh -s -- --token TOKEN
# Installs punchd into its own virtual environment from the server's wheelhouse
# (GET /dist/: no other network access), writes and starts the systemd unit, joins.
# Run it again to upgrade: the venv is kept, the unit rewritten, a joined network kept.
# `PREFIX/bin/punchctl uninstall --prefix PREFIX --yes` removes it all.
set -eu

SERVER=@SERVER@
VERSION=@VERSION@
PREFIX=/opt/punchd
UNIT_DIR=/etc/systemd/system
TOKEN=
START=1

say() { printf 'punchd install: %s\n' "$*"; }
die() { printf 'punchd install: %s\n' "$*" >&2; exit 1; }
usage() {
    cat <<USAGE
usage: sh install.sh --token TOKEN [--prefix DIR] [--server URL] [--unit-dir DIR] [--no-start]
  --token TOKEN   join token (signal-server admin key create)
  --prefix DIR    virtual environment to install into (default /opt/punchd)
  --server URL    signal server to install from (default $SERVER)
  --unit-dir DIR  where punchd.service goes (default /etc/systemd/system)
  --no-start      install only: do not start the unit, do not join
USAGE
}
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --token) value "$@"; TOKEN=$2; shift 2 ;;
        --prefix) value "$@"; PREFIX=$2; shift 2 ;;
        --server) value "$@"; SERVER=${2%/}; shift 2 ;;
        --unit-dir) value "$@"; UNIT_DIR=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$TOKEN" ] || die "--token TOKEN is required (signal-server admin key create prints one)"
# The URL goes into pip's argument list: only a URL's own characters, no spaces.
case "$SERVER" in
    http://*|https://*) ;;
    *) die "--server must be an http:// or https:// URL, got $SERVER" ;;
esac
case "$SERVER" in
    *[!]A-Za-z0-9.:/_~%[-]*) die "--server $SERVER: unexpected characters in the URL" ;;
esac
case "$PREFIX" in
    *[!A-Za-z0-9._/+-]*) die "--prefix $PREFIX: use letters, digits and ._/+- only" ;;
    /*) ;;
    *) die "--prefix must be an absolute path, got $PREFIX" ;;
esac
command -v python3 >/dev/null 2>&1 || die "python3 is needed (Debian: apt-get install python3-venv)"

# The wheelhouse is built on the server's first request for it: fetch its index with
# curl (no timeout) first, so pip's own 15 s timeout never meets the build; and before
# the venv, so a server that cannot serve leaves this host as it was.
curl -fsS -o /dev/null "$SERVER/dist/" || die "no wheelhouse at $SERVER/dist/: \
$(curl -sS "$SERVER/dist/" 2>&1 | head -c 300)"  # the server's reason (its failure is kept)

UPGRADE=0
if [ -x "$PREFIX/bin/python" ]; then
    UPGRADE=1
    say "upgrading the virtual environment in $PREFIX"
else
    [ ! -e "$PREFIX" ] || [ -z "$(ls -A "$PREFIX")" ] \
        || die "$PREFIX exists and is not a virtual environment: give another --prefix"
    python3 -m venv "$PREFIX" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    say "created a virtual environment in $PREFIX"
fi

# pip refuses a plain-http links page from any host but localhost unless trusted. It
# adds nothing to trust: this script came over the same http. Serve https (signal-server
# --certfile) where the path to the server is not yours.
TRUST=
case "$SERVER" in
    http://*) HOSTPORT=${SERVER#http://}; TRUST="--trusted-host ${HOSTPORT%%/*}" ;;
esac
# shellcheck disable=SC2086 # TRUST is empty or two words
PIP_DISABLE_PIP_VERSION_CHECK=1 "$PREFIX/bin/python" -m pip install -q --no-index $TRUST \
    --find-links "$SERVER/dist/" --upgrade "punchd==$VERSION" \
    || die "pip could not install punchd $VERSION from $SERVER/dist/"
say "installed $("$PREFIX/bin/punchctl" --version)"

if [ "$START" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    "$PREFIX/bin/punchctl" install --unit-dir "$UNIT_DIR"
    # An upgrade must run the new code: enable --now leaves a running unit as it was.
    [ "$UPGRADE" = 0 ] || systemctl restart punchd.service
    if out=$("$PREFIX/bin/punchctl" join --token "$TOKEN" 2>&1); then
        say "$out"
    else
        case "$out" in
            *"already joined"*) say "already joined: kept (${out#punchctl: })" ;;
            *) die "join failed: ${out#punchctl: }" ;;
        esac
    fi
else
    "$PREFIX/bin/punchctl" install --unit-dir "$UNIT_DIR" --no-start
    if [ "$START" = 1 ]; then
        say "no systemd on this host: start $PREFIX/bin/punchd yourself, then join"
    else
        say "not started (--no-start)"
    fi
    say "to join: $PREFIX/bin/punchctl join --token TOKEN"
fi
