#!/bin/bash
# Verifies the systemd units with systemd-analyze verify, against the files
# the build installs rather than against this machine's /usr.
#
# Usage: verify-units.sh SOURCE_DIR BUILD_DIR
#
# "systemd-analyze verify" checks unit syntax, that the units a unit needs
# exist, and that every Exec*= command exists and is executable; warnings
# (an unknown key, a value it cannot parse) are printed but do not change
# its exit status. So:
#  - each check runs in a scratch root (--root=) holding what a package
#    install would put there: the build's install rules run with DESTDIR=
#    into it, so ExecStart= must name the binary the build really installs;
#  - the root also gets this host's systemd target and slice units (for the
#    units' default dependencies: sysinit.target, basic.target,
#    system.slice, ...) and copies of the host's commands that the units
#    name outside the package (ExecReload=/bin/kill): those belong to the
#    OS, not to us;
#  - any output at all from verify is a failure, as is a non-zero status;
#  - verify does not look at User=/Group= (systemd 252 only checks that the
#    names are well formed, and prints a warning when they are not), so the
#    user and groups the units run as are checked here: the package's own
#    (User=, Group=, SocketGroup=) must be created by its sysusers.d file,
#    run with systemd-sysusers in the scratch root.
# Two roots are checked: the source units as they stand (written for a /usr
# install, so the daemon is installed with prefix /usr), and the units as
# the build installs them (for its own prefix, ExecStart= rewritten).
# The source sysusers.d file is the one checked for the accounts.
#
# Exit status: 0 all good, 1 a check failed, 77 (skip) without
# systemd-analyze.
set -euo pipefail

if [ $# -ne 2 ]; then
        echo "Usage: $0 SOURCE_DIR BUILD_DIR" >&2
        exit 2
fi
SOURCE_DIR=$(cd "$1" && pwd)
BUILD_DIR=$(cd "$2" && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "SKIP: systemd-analyze not found"
        exit 77
fi

UNITS="gpuhostd.service gpuhostd.socket"
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
pass() { echo "PASS: $*"; }

cache_var() { # NAME: a value from the build's CMake cache
        sed -n "s/^$1:[A-Z]*=//p" "$BUILD_DIR/CMakeCache.txt"
}

# The directory holding systemd's own units on this host.
host_unit_dir=""
for d in "$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || true)" \
        /usr/lib/systemd/system /lib/systemd/system; do
        if [ -n "$d" ] && [ -e "$d/sysinit.target" ]; then
                host_unit_dir=$d
                break
        fi
done

# make_root ROOT: an empty merged-/usr tree with systemd's targets/slices.
make_root() {
        local root=$1
        mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib/systemd/system" "$root/etc" "$root/run" "$root/var"
        ln -s usr/bin "$root/bin"
        ln -s usr/sbin "$root/sbin"
        ln -s usr/lib "$root/lib"
        if [ -n "$host_unit_dir" ]; then
                cp "$host_unit_dir"/*.target "$host_unit_dir"/*.slice "$root/usr/lib/systemd/system/"
        else
                echo "note: no systemd units on this host; verify will miss the default dependencies"
        fi
}

# install_build ROOT PREFIX DIR...: the install rules of the build's
# subdirectories DIR, into ROOT, with PREFIX (empty: the configured one).
# (Not "cmake --install": that also needs files no unit cares about.)
install_build() {
        local root=$1 prefix=$2 dir
        shift 2
        for dir in "$@"; do
                if ! DESTDIR=$root cmake ${prefix:+-DCMAKE_INSTALL_PREFIX=$prefix} \
                        -P "$BUILD_DIR/$dir/cmake_install.cmake" >"$tmp/install.log" 2>&1; then
                        cat "$tmp/install.log"
                        return 1
                fi
        done
}

# add_os_commands ROOT UNIT...: copies the host's commands that the units
# run from outside the package into ROOT (ExecReload=/bin/kill).
add_os_commands() {
        local root=$1 unit cmd
        shift
        for unit in "$@"; do
                sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit"
        done | sort -u | while read -r cmd; do
                if [ ! -e "$root$cmd" ] && [ ! -L "$root$cmd" ] && [ -x "$cmd" ]; then
                        case $cmd in
                        */gpuhostd | */gpuhostctl) ;; # ours: must come from the install
                        *)
                                mkdir -p "$root$(dirname "$cmd")"
                                cp -L "$cmd" "$root$cmd"
                                ;;
                        esac
                fi
        done
}

# verify ROOT LABEL UNIT...: systemd-analyze verify in ROOT; any output fails.
verify() {
        local root=$1 label=$2 rc=0
        shift 2
        SYSTEMD_LOG_COLOR=0 SYSTEMD_PAGER='' systemd-analyze verify --root="$root" --man=no --generators=no \
                "$@" >"$tmp/verify.out" 2>&1 || rc=$?
        if [ "$rc" -eq 0 ] && [ ! -s "$tmp/verify.out" ]; then
                pass "systemd-analyze verify: $label"
        else
                fail "systemd-analyze verify: $label (exit status $rc):"
                sed 's/^/    /' "$tmp/verify.out"
        fi
}

# unit_values UNIT KEY: the space-separated values of KEY= in UNIT.
unit_values() {
        sed -n "s/^$2=//p" "$1" | tr ' ' '\n' | sed '/^$/d'
}

# check_accounts ROOT SYSUSERS_FILE UNIT...: the units' user and groups.
check_accounts() {
        local root=$1 sysusers=$2 name
        shift 2
        if ! command -v systemd-sysusers >/dev/null 2>&1; then
                echo "note: systemd-sysusers not found; not checking User=/Group="
                return 0
        fi
        if ! systemd-sysusers --root="$root" "$sysusers" >"$tmp/sysusers.out" 2>&1; then
                fail "systemd-sysusers on $(basename "$sysusers"):"
                sed 's/^/    /' "$tmp/sysusers.out"
                return 0
        fi
        pass "systemd-sysusers accepts the package's sysusers.d file"
        for name in $(cat "$@" | sed -n 's/^\(User\|SocketUser\)=//p' | sort -u); do
                [ "$name" = root ] && continue
                if grep -q "^$name:" "$root/etc/passwd"; then
                        pass "user '$name' is created by the package's sysusers.d file"
                else
                        fail "user '$name' (User=/SocketUser=) is not created by the package's sysusers.d file"
                fi
        done
        for name in $(cat "$@" | sed -n 's/^\(Group\|SocketGroup\)=//p' | sort -u); do
                [ "$name" = root ] && continue
                if grep -q "^$name:" "$root/etc/group"; then
                        pass "group '$name' is created by the package's sysusers.d file"
                else
                        fail "group '$name' (Group=/SocketGroup=) is not created by the package's sysusers.d file"
                fi
        done
        # SupplementaryGroups= names distribution groups (video, render) that
        # the OS provides (base-passwd, udev), not the package; whether this
        # build host has them says nothing about the target, so this only
        # reports them.
        for name in $(for u in "$@"; do unit_values "$u" SupplementaryGroups; done | sort -u); do
                if ! grep -q "^$name:" "$root/etc/group" && ! getent group "$name" >/dev/null 2>&1; then
                        echo "note: supplementary group '$name' does not exist on this host (the OS must provide it)"
                fi
        done
}

for u in $UNITS; do
        if [ ! -f "$SOURCE_DIR/systemd/$u" ]; then
                fail "$SOURCE_DIR/systemd/$u is missing"
        fi
done
[ "$failed" -eq 0 ] || exit 1

# 1. The source units, in a /usr install of the build.
root=$tmp/usr-root
make_root "$root"
if install_build "$root" /usr daemon; then
        unitdir=$root/usr/lib/systemd/system
        for u in $UNITS; do
                cp "$SOURCE_DIR/systemd/$u" "$unitdir/$u"
        done
        add_os_commands "$root" "$unitdir/gpuhostd.service" "$unitdir/gpuhostd.socket"
        verify "$root" "systemd/*.service, systemd/*.socket (install prefix /usr)" \
                "$unitdir/gpuhostd.service" "$unitdir/gpuhostd.socket"
        check_accounts "$root" "$SOURCE_DIR/systemd/gpuhost.sysusers" \
                "$unitdir/gpuhostd.service" "$unitdir/gpuhostd.socket"
else
        fail "installing the build with prefix /usr into $root"
fi

# 2. The units as the build installs them, for its configured prefix.
prefix=$(cache_var CMAKE_INSTALL_PREFIX)
unitdir=$(cache_var GH_SYSTEMDUNITDIR)
root=$tmp/build-root
make_root "$root"
if [ -z "$prefix" ] || [ -z "$unitdir" ]; then
        fail "no CMAKE_INSTALL_PREFIX/GH_SYSTEMDUNITDIR in $BUILD_DIR/CMakeCache.txt"
elif install_build "$root" "" daemon systemd; then
        units=()
        for u in $UNITS; do
                if [ -f "$root$unitdir/$u" ]; then
                        units+=("$root$unitdir/$u")
                else
                        fail "the build does not install $unitdir/$u"
                fi
        done
        if [ ${#units[@]} -gt 0 ]; then
                add_os_commands "$root" "${units[@]}"
                verify "$root" "installed units (prefix $prefix)" "${units[@]}"
        fi
        sysusersdir=$(cache_var GH_SYSUSERSDIR)
        if [ -f "$root$sysusersdir/gpuhost.conf" ]; then
                pass "the build installs $sysusersdir/gpuhost.conf"
        else
                fail "the build does not install $sysusersdir/gpuhost.conf"
        fi
else
        fail "installing the build into $root"
fi

echo "$failed check(s) failed"
[ "$failed" -eq 0 ]
