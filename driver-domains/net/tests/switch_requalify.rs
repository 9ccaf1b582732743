//! `Switch::requalify`: a guest that changes its QoS request while attached (Xen guests write
//! their keys with `xenstore-write` after netfront connected) gets a fresh decision; its old
//! guarantee is returned first, never counted twice.

use iconnect::Decision;
use iconnect::qos::NetQosRequest;
use net_dd::switch::Switch;
use netback::engine::RxQueueLimits;
use netback::grant::FakeGrants;
use netback::negotiate::FrontendFeatures;
use netback::Netback;
use netswitch::Mac;
use xen_abi::shmem::HostMem;

#[test]
fn requalify_replaces_the_decision_and_the_reservation() {
    let nb = Netback::new(HostMem::new(4096), HostMem::new(4096), FrontendFeatures::default(), RxQueueLimits::default())
        .unwrap();
    let mut sw: Switch<HostMem, FakeGrants> = Switch::new(100_000_000, Mac([2, 0, 0, 0, 0, 1]), 0);
    assert_eq!(sw.attach(1, nb, FakeGrants::new(), Mac([2, 0, 0, 0, 0, 2]), Ok(None), 0), Ok(None));
    let req = NetQosRequest { guaranteed_bps: 30_000_000, ceiling_bps: Some(50_000_000), ..Default::default() };
    let d = sw.requalify(1, Ok(Some(req)), 1);
    assert!(matches!(d, Some(Some(Decision::Granted(g))) if g.ceiling_bps == 50_000_000), "{d:?}");
    assert_eq!(sw.reserved_bps(), 30_000_000);
    assert!(matches!(sw.requalify(1, Ok(Some(req)), 2), Some(Some(Decision::Granted(_)))));
    assert_eq!(sw.reserved_bps(), 30_000_000, "the old guarantee must be released before the new one");
    let too_much = NetQosRequest { guaranteed_bps: 200_000_000, ..Default::default() };
    assert!(matches!(sw.requalify(1, Ok(Some(too_much)), 3), Some(Some(Decision::Refused { .. }))));
    assert_eq!(sw.reserved_bps(), 0);
    assert_eq!(sw.requalify(1, Ok(None), 4), Some(None));
    assert_eq!(sw.port_info(1).map(|i| i.1), Some(None));
    assert_eq!(sw.requalify(2, Ok(None), 5), None, "no guest at port 2");
}
