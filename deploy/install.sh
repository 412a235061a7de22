#!/usr/bin/env bash
# Install or upgrade mdsync on a Debian/Ubuntu server. Idempotent: run it again to upgrade;
# it never overwrites an existing config or its secrets.
#
#   sudo deploy/install.sh --domain docs.example.com
#
# What it does (each step skipped when already done):
#   1. a dedicated system user `mdsync` (no shell, home /var/lib/mdsync)
#   2. a virtualenv in /opt/mdsync/venv with mdsync installed (or upgraded) from this checkout
#   3. /etc/mdsync/config.toml with a generated server secret and metrics token (mode 0640),
#      /etc/mdsync/env for replica credentials (mode 0600), /etc/mdsync/Caddyfile for your domain
#   4. the systemd unit /etc/systemd/system/mdsync.service, enabled (and started or restarted),
#      and mdsync-backup.timer (a nightly `mdsync backup` into /var/lib/mdsync/backups, 14 days kept)
#   5. prints the next steps
#
# Options:
#   --domain NAME     public domain (default: docs.example.com, to edit later)
#   --prefix DIR      install under DIR instead of / (a staging root: nothing outside DIR is
#                     touched, no user is created and systemctl is not called; tests use this)
#   --dry-run         print what would be done, change nothing
#   --source SPEC     what pip installs (default: the checkout this script is in)
#   --pip-args ARGS   extra arguments for pip install (e.g. "--no-deps" with a prepared venv)
#   --python PYTHON   the interpreter for the venv (default: python3, 3.11 or newer)
set -euo pipefail

DOMAIN="docs.example.com"
PREFIX=""
DRY_RUN=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(dirname "$HERE")"
PIP_ARGS=""
PYTHON="python3"

while [ $# -gt 0 ]; do
  case "$1" in
    --domain) DOMAIN="$2"; shift 2 ;;
    --prefix) PREFIX="${2%/}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --source) SOURCE="$2"; shift 2 ;;
    --pip-args) PIP_ARGS="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$DOMAIN" in
  *[!A-Za-z0-9.-]*|"") echo "install.sh: --domain must be a host name like docs.example.com" >&2; exit 2 ;;
esac

OPT="$PREFIX/opt/mdsync"
ETC="$PREFIX/etc/mdsync"
UNIT_DIR="$PREFIX/etc/systemd/system"
STATE="$PREFIX/var/lib/mdsync"
SERVICE_USER="mdsync"

say() { printf '%s\n' "$*"; }
run() {
  if [ "$DRY_RUN" = 1 ]; then
    say "would run: $*"
  else
    "$@"
  fi
}
write_file() {  # write_file PATH MODE  (content on stdin); never replaces an existing file
  local path="$1" mode="$2"
  if [ -e "$path" ]; then
    say "kept      $path (exists)"
    cat >/dev/null
    return
  fi
  if [ "$DRY_RUN" = 1 ]; then
    say "would write $path (mode $mode)"
    cat >/dev/null
    return
  fi
  local tmp
  tmp="$(mktemp "$(dirname "$path")/.install.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv "$tmp" "$path"
  say "wrote     $path"
}
random_token() {
  "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))'
}

if [ -z "$PREFIX" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), or use --prefix DIR / --dry-run" >&2
  exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "install.sh: $PYTHON is older than 3.11" >&2; exit 1; }

# 1. the service user ---------------------------------------------------------------------------
if [ -n "$PREFIX" ]; then
  say "skipped   user $SERVICE_USER (--prefix: not touching the system's users)"
elif id "$SERVICE_USER" >/dev/null 2>&1; then
  say "kept      user $SERVICE_USER (exists)"
else
  run useradd --system --home-dir /var/lib/mdsync --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  say "created   user $SERVICE_USER"
fi

# 2. the virtualenv --------------------------------------------------------------------------------
run mkdir -p "$OPT" "$ETC" "$UNIT_DIR" "$STATE"
if [ -x "$OPT/venv/bin/python" ]; then
  say "kept      $OPT/venv (exists; upgrading mdsync in it)"
else
  run "$PYTHON" -m venv "$OPT/venv"
  say "created   $OPT/venv"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
run "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $PIP_ARGS "$SOURCE"
say "installed mdsync from $SOURCE into $OPT/venv"
if [ -f "$HERE/../docs/operations.md" ]; then
  run cp "$HERE/../docs/operations.md" "$OPT/operations.md"
fi

# 3. configuration ---------------------------------------------------------------------------------
SECRET="$(random_token)"
METRICS_TOKEN="$(random_token)"
write_file "$ETC/config.toml" 0640 <<EOF
# mdsync configuration (written by deploy/install.sh; every key is in config.example.toml).
# Environment variables MDSYNC_<SECTION>__<KEY> override these; /etc/mdsync/env is read by systemd.

[server]
host = "127.0.0.1"              # Caddy proxies to this; never expose mdsync directly
port = 8080
data_dir = "/var/lib/mdsync"
public_url = "https://$DOMAIN"
secret = "$SECRET"
backup_before_migrate = true    # upgrades back up the database before migrating it

[auth]
registration = "invite"

[metrics]
token = "$METRICS_TOKEN"        # for Prometheus scraping from another machine

[replica]
# continuous replication to S3-compatible storage (credentials in /etc/mdsync/env):
# url = "s3://BUCKET/mdsync?endpoint=https://s3.example.com&region=us-east-1&forcePathStyle=true"
EOF
write_file "$ETC/env" 0600 <<EOF
# Environment for mdsync.service (systemd EnvironmentFile). Credentials for replica.url:
# AWS_ACCESS_KEY_ID=...
# AWS_SECRET_ACCESS_KEY=...
EOF
sed "s/{\$MDSYNC_SITE:docs.example.com}/$DOMAIN/" "$HERE/../Caddyfile" | write_file "$ETC/Caddyfile" 0644
if [ -z "$PREFIX" ] && [ "$DRY_RUN" = 0 ]; then
  chown root:"$SERVICE_USER" "$ETC/config.toml"
  chown "$SERVICE_USER":"$SERVICE_USER" "$STATE"
  chmod 0700 "$STATE"
fi

# 4. the systemd units ------------------------------------------------------------------------------
for unit in mdsync.service mdsync-backup.service mdsync-backup.timer; do
  if [ -f "$UNIT_DIR/$unit" ] && cmp -s "$HERE/../systemd/$unit" "$UNIT_DIR/$unit"; then
    say "kept      $UNIT_DIR/$unit (unchanged)"
  else
    run install -m 0644 "$HERE/../systemd/$unit" "$UNIT_DIR/$unit"
    say "installed $UNIT_DIR/$unit"
  fi
done
if [ -n "$PREFIX" ]; then
  say "skipped   systemctl daemon-reload / enable / restart (--prefix)"
elif [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
  run systemctl enable mdsync.service mdsync-backup.timer
  run systemctl start mdsync-backup.timer
  if systemctl is-active --quiet mdsync.service; then
    run systemctl restart mdsync.service
    say "restarted mdsync.service"
  else
    run systemctl start mdsync.service
    say "started   mdsync.service (nightly backups: mdsync-backup.timer)"
  fi
else
  run systemctl enable mdsync.service mdsync-backup.timer || true
  say "note      systemd is not running here: start mdsync.service yourself"
fi

# 5. next steps --------------------------------------------------------------------------------------
cat <<EOF

mdsync is installed. Next steps:
  1. DNS: point an A/AAAA record for $DOMAIN at this machine.
  2. Caddy: sudo apt install caddy && sudo cp $ETC/Caddyfile /etc/caddy/Caddyfile && sudo systemctl reload caddy
  3. First admin: sudo -u $SERVICE_USER $OPT/venv/bin/mdsync users create you@example.com --admin \\
                    --config /etc/mdsync/config.toml
  4. Check: sudo -u $SERVICE_USER $OPT/venv/bin/mdsync doctor --config /etc/mdsync/config.toml
            curl -s https://$DOMAIN/readyz
  5. Backups: set [replica] url in $ETC/config.toml and the credentials in $ETC/env, then
     sudo systemctl restart mdsync  (see $OPT/operations.md: "Back up" and "Restore")
EOF
