#!/bin/busybox sh
# /init of the dom0 initramfs built by `cargo xtask xen` (xtask/src/xen/initramfs.rs).
# Brings up the Xen control plane in a busybox dom0, runs /scenario.sh (written per run by the
# harness), prints its exit status and powers the machine off. Markers are parsed on the host.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
export HOME=/root
. /etc/xentest/lib.sh

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/xen /run/xenstored /run/lock /var/lib/xen /var/lib/xenstored /var/log/xen/console
ln -sf /run /var/run
ln -sf /run/lock /var/lock
echo "XENTEST-STAGE dom0-init uptime_ms=$(xt_ms)"

for m in $(cat /etc/xentest/modules); do
    insmod "/lib/modules/$m" || echo "XENTEST-WARN insmod $m failed"
done
mount -t xenfs xenfs /proc/xen || echo "XENTEST-WARN mounting xenfs failed"

xenstored --pid-file=/run/xenstored.pid || echo "XENTEST-WARN xenstored failed to start"
i=0
while ! xenstore-ls / >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then echo "XENTEST-WARN xenstored not answering"; break; fi
    usleep 100000
done
xen-init-dom0 || echo "XENTEST-WARN xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/run/xenconsoled.pid \
    || echo "XENTEST-WARN xenconsoled failed to start"
echo "XENTEST-STAGE dom0-ready uptime_ms=$(xt_ms)"

# The host passes its own deadline minus a margin (xentest_timeout=<s> on the dom0 command line)
# so that a hanging scenario is cut here and the machine still powers off cleanly.
limit=240
for w in $(cat /proc/cmdline); do
    case "$w" in xentest_timeout=*) limit=${w#*=} ;; esac
done
if [ -f /scenario.sh ]; then
    timeout -s KILL "$limit" sh /scenario.sh
    rc=$?
    [ $rc -eq 137 ] && echo "XENTEST-WARN scenario killed after ${limit}s"
else
    echo "XENTEST-WARN no /scenario.sh"
    rc=127
fi
# The console followers (`tail -f` of xenconsoled's logs) may still hold a domain's last lines:
# give them a moment before dom0 goes.
sleep 1
echo "XENTEST-END rc=$rc uptime_ms=$(xt_ms)"
poweroff -f
