# Helpers for scenario scripts of the nested Xen harness (sourced by /init and /scenario.sh in
# dom0). Every marker is one line; xtask/src/xen/runner.rs parses them from the serial console:
#   XENTEST-RESULT ok <name>            XENTEST-RESULT FAIL <name>: <why>
#   XENTEST-DOMAIN <name> domid=<N> tries=<k> create_ms=<ms> rc=<xl create exit code>
#   XENTEST-DOMAIN-END <name> state=<xl state flags> how=<poweroff|crash|gone|running> after_ms=<ms>
#   XENTEST-INFO <key>=<value>          XENTEST-WARN <text>
# Domains print through port 0xe9, which Xen shows as `(d<domid>) ...` lines (guest_loglvl=all).

# Milliseconds of dom0 uptime (10 ms resolution).
xt_ms() {
    read -r up _ < /proc/uptime
    f=${up#*.}
    f=${f#0}
    echo $(( ${up%.*} * 1000 + ${f:-0} * 10 ))
}

# xt_result ok <name> | xt_result FAIL <name> <why>
xt_result() {
    if [ "$1" = ok ]; then echo "XENTEST-RESULT ok $2"; else echo "XENTEST-RESULT FAIL $2: $3"; fi
}

# Selected `xl info` lines as XENTEST-INFO markers.
xt_info() {
    xl info > /tmp/xl-info 2>&1 || echo "XENTEST-WARN xl info failed: $(head -n 3 /tmp/xl-info)"
    while IFS= read -r line; do
        k=${line%%[ :]*}
        case "$k" in
            virt_caps|xen_caps|xen_version|nr_cpus|total_memory|free_memory|xen_commandline)
                echo "XENTEST-INFO $k=${line#*: }" ;;
        esac
    done < /tmp/xl-info
}

# xl state flags of a domain (e.g. `-b----`, `---s--`, `---sc-`); empty if it does not exist.
# `xl` itself crashes now and then under this nested setup (exit 139, "corrupted double-linked
# list"): a crashed `xl list` must not read as "the domain is gone". Retry, else say `xl-failed`.
xt_state() {
    for _ in 1 2 3; do
        out=$(xl list "$1" 2>/dev/null)
        rc=$?
        if [ $rc -lt 128 ]; then
            echo "$out" | awk 'NR == 2 { print $5 }'
            return
        fi
        echo "XENTEST-WARN xl list $1 crashed (exit $rc); retrying" >&2
        usleep 200000
    done
    echo xl-failed
}

# xt_create <name> <config>: `xl create`, judged by `xl list` rather than by its exit code alone
# (it has aborted after building a working domain), with one retry.
xt_create() {
    name=$1
    cfg=$2
    try=0
    while [ $try -lt 2 ]; do
        try=$((try + 1))
        t0=$(xt_ms)
        xl create "$cfg" > "/tmp/xl-create-$name.log" 2>&1
        rc=$?
        t1=$(xt_ms)
        sed "s/^/[xl create $name] /" "/tmp/xl-create-$name.log"
        id=$(xl domid "$name" 2>/dev/null)
        if [ -n "$id" ]; then
            case "$(xt_state "$name")" in
                *p*) [ $rc -ne 0 ] && xl unpause "$name" ;;
            esac
            echo "XENTEST-DOMAIN $name domid=$id tries=$try create_ms=$((t1 - t0)) rc=$rc"
            return 0
        fi
        echo "XENTEST-WARN xl create $name: exit $rc and no such domain (try $try)"
        xl destroy "$name" > /dev/null 2>&1
    done
    xt_result FAIL "create-$name" "xl create failed twice (last exit $rc)"
    return 1
}

# xt_wait_end <name> <seconds>: wait until the domain shut down (needs on_poweroff/on_crash =
# "preserve" to tell poweroff from crash); prints XENTEST-DOMAIN-END.
xt_wait_end() {
    name=$1
    limit=$(($2 * 1000))
    t0=$(xt_ms)
    while :; do
        st=$(xt_state "$name")
        el=$(($(xt_ms) - t0))
        case "$st" in
            xl-failed) how=running ;;
            "") how=gone ;;
            *c*) how=crash ;;
            *s*) how=poweroff ;;
            *) how=running ;;
        esac
        if [ "$how" != running ] || [ $el -ge $limit ]; then break; fi
        usleep 200000
    done
    echo "XENTEST-DOMAIN-END $name state=${st:-none} how=$how after_ms=$el"
    if [ "$how" = crash ]; then
        id=$(xl domid "$name" 2>/dev/null)
        [ -n "$id" ] && xen-hvmctx "$id" 2>&1 | head -n 40 | sed "s/^/[hvmctx $name] /"
    fi
}

# Console log xenconsoled kept for a domain (its PV console), prefixed.
xt_console_log() {
    f="/var/log/xen/console/guest-$1.log"
    [ -f "$f" ] && sed "s/^/[console $1] /" "$f"
}

xt_destroy() { xl destroy "$1" > /dev/null 2>&1; }

# Follow a domain's PV console (xenconsoled's log) onto dom0's console, prefixed `[console <name>]`,
# in the background until power-off (Linux PV guests cannot print through Xen's own console).
xt_follow() {
    f="/var/log/xen/console/guest-$1.log"
    (
        i=0
        while [ ! -f "$f" ] && [ $i -lt 600 ]; do usleep 100000; i=$((i + 1)); done
        # A read/echo loop, not sed: it writes each line at once whatever stdout is.
        tail -n +1 -f "$f" | while IFS= read -r l; do echo "[console $1] $l"; done
    ) &
}

# The value of `key=value` on the kernel command line (guests read their job parameters so).
xt_arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}" ;; esac
    done
}

# xt_bridge <name> <address/prefix>: a bridge in dom0 for dom0-backed vifs.
xt_bridge() {
    brctl addbr "$1" && ip addr add "$2" dev "$1" && ip link set "$1" up \
        || echo "XENTEST-WARN bridge $1 setup failed"
}

# xt_wait_log <name> <text> <seconds>: wait until a domain's PV console log (xenconsoled's)
# contains <text>; returns 1 at the time limit.
xt_wait_log() {
    f="/var/log/xen/console/guest-$1.log"
    i=0
    while [ $i -lt $(($3 * 10)) ]; do
        [ -f "$f" ] && grep -q -- "$2" "$f" && return 0
        usleep 100000
        i=$((i + 1))
    done
    return 1
}
