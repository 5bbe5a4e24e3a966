#!/usr/bin/env bash
# Idempotent setup of what the review tests need outside Python: Debian's Chromium (browser
# tests) and a PostgreSQL on 127.0.0.1:5432 with a database `test` (store tests).
# `make test` calls this before pytest. It never fails the build: when it cannot provide a
# service it says so, and the tests skip with a reason (or, with CI=true, fail loudly).
set -u

# Overridable only so the fresh-machine path can be exercised against stubs.
PG_HOST=127.0.0.1
PG_PORT=${ANY2CAP_PG_PORT:-5432}
PG_DB=test
PG_ETC=${ANY2CAP_PG_ETC:-/etc/postgresql}
CHROMIUM=${ANY2CAP_CHROMIUM:-/usr/bin/chromium}
# apt-get waits for another engineer's or the system's apt run instead of failing at once.
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600)

say() { printf 'ensure_services: %s\n' "$*"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        "${APT[@]}" update >/dev/null || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "$@" >/dev/null
}

pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
    else
        # No client tools yet: a bare TCP connect says whether anything listens.
        (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
    fi
}

wait_pg() {
    for _ in $(seq 1 30); do
        pg_ready && return 0
        sleep 1
    done
    return 1
}

clusters() { ls "$PG_ETC" 2>/dev/null; }

start_clusters() {
    local version
    for version in $(clusters); do
        if [ -d "$PG_ETC/$version/main" ]; then
            say "starting PostgreSQL $version/main"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        fi
    done
}

as_postgres() {
    # The Unix socket with peer authentication works on a stock Debian install.
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
        su postgres -s /bin/sh -c "psql -X -q -tA -c \"$1\""
    else
        psql -X -q -tA -h "$PG_HOST" -p "$PG_PORT" -U postgres -c "$1"
    fi
}

trust_localhost() {
    # Tests connect as postgres@127.0.0.1 without a password (ANY2CAP_TEST_PG_URL's default);
    # only done on a cluster this script installed itself.
    local version hba
    for version in $(clusters); do
        hba="$PG_ETC/$version/main/pg_hba.conf"
        [ -f "$hba" ] || continue
        if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
            say "trusting connections from 127.0.0.1 in $hba"
            sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
            pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
        fi
    done
}

ensure_chromium() {
    if [ -x "$CHROMIUM" ]; then
        say "chromium: present ($("$CHROMIUM" --version 2>/dev/null | head -1))"
    elif can_apt; then
        say "chromium: installing Debian's chromium package"
        if apt_install chromium && [ -x "$CHROMIUM" ]; then
            say "chromium: installed"
        else
            say "chromium: install failed; browser tests will skip (or fail with CI=true)"
        fi
    else
        say "chromium: missing and cannot install (not root or no apt-get); browser tests will skip"
    fi
}

ensure_postgres() {
    if pg_ready; then
        say "postgresql: accepting connections on $PG_HOST:$PG_PORT"
    elif [ -n "$(clusters)" ]; then
        start_clusters
        wait_pg || say "postgresql: cluster did not come up"
    elif can_apt; then
        say "postgresql: not installed; installing Debian's postgresql package"
        if apt_install postgresql; then
            if [ -z "$(clusters)" ] && command -v pg_createcluster >/dev/null 2>&1; then
                # Containers may skip the package's own cluster creation.
                pg_createcluster "$(ls /usr/lib/postgresql | sort -n | tail -1)" main || true
            fi
            trust_localhost
            start_clusters
            wait_pg || say "postgresql: installed but did not come up"
        else
            say "postgresql: install failed"
        fi
    else
        say "postgresql: not installed and cannot install (not root or no apt-get)"
    fi
    if ! pg_ready; then
        say "postgresql: unavailable; PostgreSQL tests will skip (or fail with CI=true)"
        return
    fi
    if command -v psql >/dev/null 2>&1; then
        if [ "$(as_postgres "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" 2>/dev/null)" = 1 ]; then
            say "postgresql: database '$PG_DB' present"
        elif as_postgres "CREATE DATABASE $PG_DB" >/dev/null 2>&1; then
            say "postgresql: created database '$PG_DB'"
        else
            say "postgresql: could not create database '$PG_DB' (set ANY2CAP_TEST_PG_URL)"
        fi
    fi
}

ensure_chromium
ensure_postgres
exit 0
