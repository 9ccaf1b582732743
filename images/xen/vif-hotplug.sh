#!/bin/sh
# vif hotplug script for the busybox dom0 (Debian's are bash scripts). libxl runs it as
# `<script> online|offline` with $vif (backend interface) and $XENBUS_PATH (backend directory).
# Used with `vif = [ 'bridge=<br>,script=/etc/xentest/vif-hotplug.sh' ]`. Backends in a driver
# domain need no script: the driver domain writes hotplug-status itself.
case "$1" in
    online|add)
        bridge=$(xenstore-read "$XENBUS_PATH/bridge" 2>/dev/null)
        ip link set "$vif" up
        [ -n "$bridge" ] && brctl addif "$bridge" "$vif"
        xenstore-write "$XENBUS_PATH/hotplug-status" connected
        ;;
    offline|remove)
        bridge=$(xenstore-read "$XENBUS_PATH/bridge" 2>/dev/null)
        [ -n "$bridge" ] && brctl delif "$bridge" "$vif" 2>/dev/null
        ip link set "$vif" down 2>/dev/null
        ;;
esac
exit 0
