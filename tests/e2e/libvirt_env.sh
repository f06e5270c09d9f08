#!/usr/bin/env bash
# Bring up a real, privileged libvirtd serving qemu:///system on a Debian 12
# machine without systemd (CI containers, these dev VMs), for the e2e tests.
#
#   libvirt_env.sh setup     install packages, create kvm + libvirt-qemu groups and user,
#                            open /dev/kvm to group kvm, create the log dirs
#   libvirt_env.sh start     setup + start virtlogd and libvirtd, wait until virsh answers
#   libvirt_env.sh stop      stop libvirtd (running domains survive, as with systemd)
#   libvirt_env.sh restart   stop + start (e.g. after installing a hook: libvirtd only
#                            scans /etc/libvirt/hooks when it starts)
#
# Idempotent: every step checks before acting. Every wait is bounded (start gives up
# after LIBVIRT_START_TIMEOUT + ~10 s, stop after LIBVIRT_STOP_TIMEOUT) and fails loudly.
# Must run as root. Tunables: LIBVIRT_START_TIMEOUT, LIBVIRT_STOP_TIMEOUT (seconds).
set -euo pipefail

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 ovmf
      qemu-system-arm qemu-efi-aarch64   # aarch64 guests (TCG, AAVMF): real-QEMU layouts
      qemu-system-ppc                    # pSeries definitions: PHB placement
      libvirt-dev pkg-config)            # the last two let libvirt-python build from PyPI
URI=qemu:///system
LIBVIRTD_PID=/run/libvirtd.pid           # pidfiles of the privileged daemons
VIRTLOGD_PID=/run/virtlogd.pid
LOG=/var/log/libvirt/libvirtd.log        # with -d and no journald, errors would vanish
START_TIMEOUT=${LIBVIRT_START_TIMEOUT:-60}
STOP_TIMEOUT=${LIBVIRT_STOP_TIMEOUT:-30}

die()  { echo "libvirt_env: ERROR: $*" >&2; exit 1; }
note() { echo "libvirt_env: $*" >&2; }

# alive PIDFILE NAME: the daemon recorded there still runs. Checking the name keeps a
# stale pidfile whose pid was reused from making us wait on (or signal) a stranger.
alive() {
    local pid; pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# own_fds CMD...: run CMD with only stdin, stdout and stderr open. A daemon keeps every
# descriptor it inherits for its whole life: started under `flock LOCK cmd`, libvirtd
# would hold the e2e lock for ever and every later test session would wait on it.
own_fds() {
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
        done
        exec "$@"
    )
}

# `timeout`: a wedged daemon must not wedge the caller.
answers() { timeout 5 virsh -c "$URI" version >/dev/null 2>&1; }

setup() {
    [[ $EUID -eq 0 ]] || die "must run as root (privileged qemu:///system)"
    local missing=() p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        note "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Lock timeout: another apt may still be finishing (cloud-init, a previous run).
        local inst=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
        # Fresh images ship without package lists, old ones with stale lists: refresh only
        # when apt can't see a package or the install fails.
        apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt-get update -q
        "${inst[@]}" "${missing[@]}" || { apt-get update -q && "${inst[@]}" "${missing[@]}"; } ||
            die "apt-get install ${missing[*]} failed"
    fi
    # Debian creates these in libvirt-daemon-system, which we do not install (it wants
    # systemd). Without qemu.conf the QEMU driver runs QEMU as libvirt-qemu:libvirt-qemu and
    # refuses to start if either is missing; membership of kvm gives QEMU /dev/kvm.
    getent group kvm >/dev/null || groupadd --system kvm
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    getent passwd libvirt-qemu >/dev/null ||
        useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
                --no-create-home --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    id -nG libvirt-qemu | grep -qw kvm || usermod -a -G kvm libvirt-qemu
    # Without udev, /dev/kvm stays root:root 0600 and QEMU (not root) cannot open it.
    # No /dev/kvm at all is fine: tests then use <domain type='qemu'> (TCG).
    if [[ -c /dev/kvm ]]; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || note "cannot chmod /dev/kvm; type='kvm' may fail"
    else
        note "no /dev/kvm: use <domain type='qemu'>"
    fi
    # libvirtd creates most of its state dirs itself, but not the log dirs virtlogd needs.
    install -d -m 0755 /var/log/libvirt /var/lib/libvirt /run/libvirt
    install -d -m 0700 /var/log/libvirt/qemu
}

start() {
    setup
    if ! alive "$VIRTLOGD_PID" virtlogd; then
        note "starting virtlogd"
        own_fds virtlogd -d || die "virtlogd failed to start"
    fi
    if alive "$LIBVIRTD_PID" libvirtd && answers; then
        note "libvirtd already running (pid $(cat "$LIBVIRTD_PID"))"; return 0
    fi
    local logsize; logsize=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
    if ! alive "$LIBVIRTD_PID" libvirtd; then
        note "starting libvirtd"
        LIBVIRT_LOG_OUTPUTS="3:file:$LOG" own_fds libvirtd -d || die "libvirtd -d failed (see $LOG)"
    fi
    # The pidfile appears before the drivers are initialised: poll the API itself.
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers; do
        if ! alive "$LIBVIRTD_PID" libvirtd || ((SECONDS >= deadline)); then
            tail -c +$((logsize + 1)) "$LOG" 2>/dev/null | grep -E 'error|warning' >&2 || true
            alive "$LIBVIRTD_PID" libvirtd || die "libvirtd exited during start-up (log: $LOG)"
            die "libvirtd did not answer on $URI within ${START_TIMEOUT}s (log: $LOG)"
        fi
        sleep 0.5
    done
    note "libvirtd ready: $(virsh -c "$URI" version 2>/dev/null | grep -m1 'Running hypervisor' || true)"
}

stop() {
    if ! alive "$LIBVIRTD_PID" libvirtd; then
        note "libvirtd not running"; rm -f "$LIBVIRTD_PID"; return 0
    fi
    local pid; pid=$(cat "$LIBVIRTD_PID")
    note "stopping libvirtd (pid $pid)"
    kill -TERM "$pid"
    # Wait for the process, not the pidfile: a restart racing the old daemon's
    # shutdown would fail to take the pidfile lock.
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "libvirtd (pid $pid) still running after ${STOP_TIMEOUT}s"
        sleep 0.2
    done
}

case ${1:-} in
    setup)   setup ;;
    start)   start ;;
    stop)    stop ;;
    restart) stop; start ;;
    *)       echo "usage: $0 setup|start|stop|restart" >&2; exit 2 ;;
esac
