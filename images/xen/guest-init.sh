#!/bin/busybox sh
# /init of the Linux PV guest initramfs built by `cargo xtask xen` (xtask/src/xen/initramfs.rs).
# Loads the Xen frontends, runs /job.sh (written per scenario) and powers the domain off. Its
# console is hvc0 (the PV console); dom0 follows xenconsoled's log of it onto the serial line.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
. /etc/xentest/lib.sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/xentest/modules); do
    insmod "/lib/modules/$m" || echo "XENTEST-WARN guest: insmod $m failed"
done
# xenfs gives /proc/xen/xenbus for xenstore-read/-write (QoS requests from inside the guest).
mount -t xenfs xenfs /proc/xen 2>/dev/null
hostname "$(xenstore-read name 2>/dev/null || echo guest)"
echo "XENTEST-GUEST up $(hostname) uptime_ms=$(xt_ms) cmdline: $(cat /proc/cmdline)"
if [ -f /job.sh ]; then
    sh /job.sh
    echo "XENTEST-GUEST job-end rc=$? uptime_ms=$(xt_ms)"
fi
# Let xenconsoled drain the PV console before the domain goes: a run lost a guest's last lines
# (iperf3's result and job-end) to an immediate power-off.
sleep 2
poweroff -f
