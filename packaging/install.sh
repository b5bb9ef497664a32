#!/usr/bin/env bash
# Installs Hearth as a systemd service, from an offline bundle or a checkout.
#
#   install.sh --offline hearth-bundle-*.tar --fingerprint SHA256 [options]
#   install.sh [options]                 (from this checkout; needs the package index)
#
# With --offline nothing touches a network: the bundle's signature (Ed25519,
# checked against the fingerprint you were given out of band) and every
# file's SHA-256 are verified first, then pip installs from the bundle's
# wheelhouse only.  Needs bash, python3 (with venv), tar, sha256sum, openssl.
#
# Options:
#   --offline BUNDLE      install from this bundle (hearth bundle build / make bundle)
#   --fingerprint HEX     SHA-256 of the signing key the bundle must carry (repeatable)
#   --prefix DIR          where the venv goes (default /opt/hearth)
#   --python PATH         the Python to build the venv with (default python3)
#   --no-service          only the venv (and models under PREFIX/models): no user,
#                         unit, key or store; for containers, tests, or a second look
#   --key-backup PATH     also write the new master key here (removable media); without
#                         it the key exists only sealed to this machine
#   --no-seal-key         keep the master key as a root-only file instead of sealing it
#                         with systemd-creds (hosts without systemd 250+)
#   --start               enable and start the service (default: enable only)
#   --verify-only         check the bundle (and that it is not older than the one
#                         installed under PREFIX) and stop
#   --allow-downgrade     install a bundle older than the installed one, on purpose
set -euo pipefail
umask 077

PREFIX=/opt/hearth
PYTHON=python3
BUNDLE=""
FINGERPRINTS=()
SERVICE=1
STATE_DIR=/var/lib/hearth      # the unit's StateDirectory=hearth
KEY_BACKUP=""
SEAL_KEY=1
START=0
VERIFY_ONLY=0
ALLOW_DOWNGRADE=0
ETC=/etc/hearth
UNIT_DIR=/etc/systemd/system
USER_NAME=hearth

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --offline) BUNDLE=${2:?}; shift 2 ;;
        --fingerprint) FINGERPRINTS+=("$(echo "${2:?}" | tr 'A-F' 'a-f' | tr -d ':')"); shift 2 ;;
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --no-service) SERVICE=0; shift ;;
        --key-backup) KEY_BACKUP=${2:?}; shift 2 ;;
        --no-seal-key) SEAL_KEY=0; shift ;;
        --start) START=1; shift ;;
        --verify-only) VERIFY_ONLY=1; shift ;;
        --allow-downgrade) ALLOW_DOWNGRADE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[ $VERIFY_ONLY = 0 ] || [ -n "$BUNDLE" ] || die "--verify-only needs --offline BUNDLE"
for tool in tar sha256sum "$PYTHON"; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hearth-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- the bundle: list, unpack, verify --------------------------------------------------

verify_bundle() {
    local top=$1 fp ok=0 listed present
    command -v openssl >/dev/null || die "openssl is required to check the bundle's signature"
    [ ${#FINGERPRINTS[@]} -gt 0 ] || {
        fp=$(openssl pkey -pubin -in "$top/signing-key.pem" -outform DER 2>/dev/null \
             | sha256sum | cut -d' ' -f1)
        die "no --fingerprint given. This bundle is signed by key $fp; compare it with the
fingerprint the build machine printed (by a channel you trust), then pass --fingerprint"
    }
    for f in MANIFEST MANIFEST.sig signing-key.pem; do
        [ -f "$top/$f" ] || die "bundle: $f is missing"
    done
    fp=$(openssl pkey -pubin -in "$top/signing-key.pem" -outform DER 2>/dev/null \
         | sha256sum | cut -d' ' -f1) || die "bundle: signing-key.pem is not a public key"
    for want in "${FINGERPRINTS[@]}"; do
        [ "$fp" = "$want" ] && ok=1
    done
    [ $ok = 1 ] || die "bundle: signed by key $fp, which is not a --fingerprint you trust"
    openssl pkeyutl -verify -pubin -inkey "$top/signing-key.pem" -rawin \
        -in "$top/MANIFEST" -sigfile "$top/MANIFEST.sig" >/dev/null 2>&1 \
        || die "bundle: the manifest signature does not verify"
    # the same rules as runtime/bundle/manifest.py
    # (no pipes into grep -q here: with pipefail an early exit would read as "no match")
    if LC_ALL=C grep -vqE '^[0-9a-f]{64}  [^/ ]([^\\]*[^ ])?$' "$top/MANIFEST"; then
        die "bundle: malformed MANIFEST line"
    fi
    if grep -qE '(^|/)\.{1,2}(/|$)|//' <<<"$(cut -c67- "$top/MANIFEST")"; then
        die "bundle: MANIFEST names an unsafe path"
    fi
    [ -z "$(find "$top" ! -type f ! -type d)" ] || die "bundle: holds something not a plain file"
    listed=$(cut -c67- "$top/MANIFEST" | LC_ALL=C sort)
    present=$(cd "$top" && find . -type f ! -path ./MANIFEST ! -path ./MANIFEST.sig \
              ! -path ./signing-key.pem | sed 's|^\./||' | LC_ALL=C sort)
    [ "$listed" = "$present" ] || die "bundle: files differ from the MANIFEST:
$(diff <(echo "$listed") <(echo "$present") | grep '^[<>]' | head -20)"
    # every folder must hold a listed file: an unsigned (even empty) folder is refused
    listed=$(cut -c67- "$top/MANIFEST" \
             | awk -F/ '{p=$1; for (i = 2; i <= NF; i++) {print p; p = p "/" $i}}' \
             | LC_ALL=C sort -u)
    present=$(cd "$top" && find . -mindepth 1 -type d | sed 's|^\./||' | LC_ALL=C sort)
    [ "$listed" = "$present" ] || die "bundle: folders differ from the MANIFEST:
$(diff <(echo "$listed") <(echo "$present") | grep '^[<>]' | head -20)"
    (cd "$top" && sha256sum --check --strict --quiet MANIFEST) \
        || die "bundle: a file does not match its SHA-256 in the MANIFEST"
    say "bundle verified: signed by $fp, $(wc -l < "$top/MANIFEST") files"
}

unpack_bundle() {
    local listing names
    [ -f "$BUNDLE" ] || die "$BUNDLE: no such file"
    listing=$(tar -tvf "$BUNDLE") || die "$BUNDLE: not a readable tar archive"
    names=$(tar -tf "$BUNDLE") || die "$BUNDLE: not a readable tar archive"
    # plain files and folders only, all under one hearth-bundle-* folder
    if grep -qv '^[-d]' <<<"$listing"; then
        die "$BUNDLE: holds links or devices; refusing to unpack it"
    fi
    if grep -qvE '^hearth-bundle-[A-Za-z0-9_.+-]+(/|$)' <<<"$names" \
       || grep -qE '(^|/)\.\.(/|$)' <<<"$names"; then
        die "$BUNDLE: entries outside one hearth-bundle-* folder; refusing to unpack it"
    fi
    tar -xf "$BUNDLE" -C "$WORK" --no-same-owner --no-same-permissions
    TOP=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d)
    [ "$(echo "$TOP" | wc -l)" = 1 ] || die "$BUNDLE: not one top folder"
}

bundle_field() {
    "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# A validly signed but older bundle must not quietly replace a newer install
# (a replayed bundle would bring back fixed bugs and old models).
check_not_older() {
    local installed="$PREFIX/share/BUNDLE.json" new old
    [ -f "$installed" ] || return 0
    new=$(bundle_field "$TOP/BUNDLE.json" created)
    old=$(bundle_field "$installed" created)
    if [[ "$new" < "$old" ]]; then
        [ $ALLOW_DOWNGRADE = 1 ] || die "bundle: built $new, older than the installed one \
(built $old); pass --allow-downgrade to roll back on purpose"
        say "rolling back to a bundle built $new (installed: $old)"
    fi
}

# ---- the venv -------------------------------------------------------------------------

# pip from the bundle's wheelhouse and nothing else (SECURITY-CASES 32): every
# inherited PIP_* variable is dropped (PIP_FIND_LINKS, PIP_INDEX_URL, ... would
# add other sources), no pip.conf is read (PIP_CONFIG_FILE=/dev/null), and
# --isolated ignores the user's environment and configuration as well.
offline_pip() {
    local unset=() name
    while read -r name; do
        unset+=(-u "$name")
    done < <(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p')
    env "${unset[@]}" PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$PREFIX/venv/bin/python" -m pip --isolated "$@"
}

install_venv() {
    local pyver tag
    tag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    if [ -n "$BUNDLE" ]; then
        pyver=$(bundle_field "$TOP/BUNDLE.json" python)
        [ "$pyver" = "$tag" ] || die "the bundle's wheels are for $pyver, $PYTHON is $tag"
    fi
    mkdir -p "$PREFIX"
    chmod 0755 "$PREFIX"
    [ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv" \
        || die "$PYTHON -m venv failed (Debian: apt install python3-venv)"
    if [ -n "$BUNDLE" ]; then
        version=$(bundle_field "$TOP/BUNDLE.json" hearth_version)
        offline_pip install --no-index --find-links "$TOP/wheelhouse" \
            --upgrade "hearth==$version" >&2 || die "pip install from the wheelhouse failed"
        mkdir -p "$PREFIX/share"
        cp "$TOP/BUNDLE.json" "$TOP/MANIFEST" "$PREFIX/share/"
        cp -r "$TOP/packaging" "$PREFIX/share/"
    else
        local src
        src=$(cd "$(dirname "$0")/.." && pwd)
        [ -f "$src/setup.py" ] || die "no --offline bundle and no checkout around $0"
        "$PREFIX/venv/bin/python" -m pip install --upgrade "$src" >&2
        mkdir -p "$PREFIX/share/packaging"
        cp "$src/packaging/systemd/hearth.service" \
           "$src/packaging/systemd/hearth-coordinator.service" \
           "$src/packaging/hearth.example.toml" "$PREFIX/share/packaging/"
    fi
    chmod -R u=rwX,go=rX "$PREFIX"
    say "installed $("$PREFIX/venv/bin/hearth" --version) into $PREFIX/venv"
}

bundle_models() {
    if [ -n "$BUNDLE" ] && [ -d "$TOP/models" ]; then
        find "$TOP/models" -name '*.gguf' | sort
    fi
}

# ---- the service: user, key, store, unit ----------------------------------------------

install_service() {
    local hearth="$PREFIX/venv/bin/hearth" key="$WORK/master.key" m name
    getent passwd "$USER_NAME" >/dev/null || useradd --system --user-group --no-create-home \
        --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$USER_NAME"
    install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
    install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"

    if [ -f "$ETC/hearth-master.cred" ] || [ -f "$ETC/hearth-master.key" ]; then
        say "keeping the existing master key"
        if [ -f "$ETC/hearth-master.cred" ]; then
            systemd-creds decrypt --name=hearth-master "$ETC/hearth-master.cred" "$key"
        else
            cp "$ETC/hearth-master.key" "$key"
        fi
    else
        "$hearth" keys init --state-dir "$STATE_DIR" --key-file "$key" >&2
        if [ -n "$KEY_BACKUP" ]; then
            install -m 0400 "$key" "$KEY_BACKUP"
            say "master key copied to $KEY_BACKUP: store it offline"
        else
            say "warning: the master key is kept only for this machine; without a copy" \
                "(--key-backup) a lost machine means a lost store"
        fi
        if [ $SEAL_KEY = 1 ] && command -v systemd-creds >/dev/null; then
            systemd-creds encrypt --name=hearth-master "$key" "$ETC/hearth-master.cred"
            say "master key sealed with systemd-creds into $ETC/hearth-master.cred"
        else
            install -m 0400 -o root -g root "$key" "$ETC/hearth-master.key"
            install -d -m 0755 "$UNIT_DIR/hearth.service.d"
            printf '[Service]\nLoadCredentialEncrypted=\nLoadCredential=hearth-master:%s\n' \
                "$ETC/hearth-master.key" > "$UNIT_DIR/hearth.service.d/credential.conf"
            chmod 0644 "$UNIT_DIR/hearth.service.d/credential.conf"
            say "master key kept unsealed in $ETC/hearth-master.key (root only)"
        fi
    fi
    while read -r m; do
        name=$(basename "$m" .gguf)
        "$hearth" models import "$m" --name "$name" --state-dir "$STATE_DIR" \
            --key-file "$key" >&2
    done < <(bundle_models)
    chown -R "$USER_NAME:$USER_NAME" "$STATE_DIR"

    if [ ! -f "$ETC/hearth.toml" ]; then
        if [ -n "$BUNDLE" ]; then
            install -m 0640 -o root -g "$USER_NAME" "$TOP/packaging/hearth.toml" "$ETC/hearth.toml"
        else
            install -m 0640 -o root -g "$USER_NAME" "$PREFIX/share/packaging/hearth.example.toml" \
                "$ETC/hearth.toml"
        fi
    else
        say "keeping $ETC/hearth.toml"
    fi
    sed "s|/opt/hearth|$PREFIX|g" "$PREFIX/share/packaging/hearth.service" \
        > "$UNIT_DIR/hearth.service"
    chmod 0644 "$UNIT_DIR/hearth.service"
    # A federation's coordinator runs on one machine only: its unit is
    # installed, never enabled here (docs/federation.md).
    if [ -f "$PREFIX/share/packaging/hearth-coordinator.service" ]; then
        sed "s|/opt/hearth|$PREFIX|g" "$PREFIX/share/packaging/hearth-coordinator.service" \
            > "$UNIT_DIR/hearth-coordinator.service"
        chmod 0644 "$UNIT_DIR/hearth-coordinator.service"
        say "installed hearth-coordinator.service, disabled (for a federation's coordinator)"
    fi
    systemctl daemon-reload
    "$hearth" doctor --config "$ETC/hearth.toml" --state-dir "$STATE_DIR" --key-file "$key" \
        --unit "$UNIT_DIR/hearth.service" >&2 || say "hearth doctor reports problems (above)"
    systemctl enable hearth.service
    if [ $START = 1 ]; then
        systemctl restart hearth.service
        systemctl is-active --quiet hearth.service || die "hearth.service did not start:
$(journalctl -u hearth.service -n 30 --no-pager 2>/dev/null)"
        say "hearth.service is running"
    else
        say "enabled hearth.service; start it with: systemctl start hearth"
    fi
}

if [ $SERVICE = 1 ] && [ $VERIFY_ONLY = 0 ]; then
    [ "$(id -u)" = 0 ] || die "installing the service needs root (or use --no-service)"
    [ -d /run/systemd/system ] || die "systemd is not running on this machine (use --no-service)"
fi
if [ -n "$BUNDLE" ]; then
    unpack_bundle
    verify_bundle "$TOP"
    check_not_older
fi
[ $VERIFY_ONLY = 0 ] || exit 0
install_venv
if [ $SERVICE = 1 ]; then
    install_service
else
    while read -r m; do
        mkdir -p "$PREFIX/models"
        cp "$m" "$PREFIX/models/"
        chmod 0644 "$PREFIX/models/$(basename "$m")"
        say "model $(basename "$m") in $PREFIX/models"
    done < <(bundle_models)
fi
