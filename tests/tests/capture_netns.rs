//! weir-init's rules applied for real with iptables in a network namespace that stands in
//! for a pod, wired by a veth pair to a second namespace that stands in for the rest of the
//! network. Listeners on 15001 and 15006 stand in for Envoy: this proves the capture and its
//! exclusions independently of Envoy (the sidecar test runs the real thing).

use weir_core::mesh::{INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT, PROBE_PORT, PROXY_UID};
use weir_tests::netns::*;

#[test]
fn weir_init_captures_outbound_and_inbound_tcp_except_what_it_must_not() {
    if !can_run("weir_init_captures_outbound_and_inbound_tcp_except_what_it_must_not") {
        return;
    }
    let init = weir_tests::workspace_binary("weir-init").unwrap();
    let init = init.to_str().expect("utf-8 path");
    let mut net = Net::new("cap");
    // The rest of the network: a service, and a second one on a port the pod excludes.
    net.serve(Side::Peer, 7000, "direct-7000");
    net.serve(Side::Peer, 7001, "direct-7001");
    // The pod: stand-ins for Envoy's listeners, and a probe port.
    net.serve(Side::Pod, OUTBOUND_CAPTURE_PORT, "captured-outbound");
    net.serve(Side::Pod, INBOUND_CAPTURE_PORT, "captured-inbound");
    net.serve(Side::Pod, PROBE_PORT, "probe-port");

    // Before weir-init: nothing is captured.
    assert_eq!(net.ask(Side::Pod, None, PEER_IP, 7000), "direct-7000");

    let pod = net.pod.clone();
    run(&[
        "ip",
        "netns",
        "exec",
        &pod,
        init,
        "--exclude-outbound-ports",
        "7001",
        "--exclude-inbound-ports",
        "9090",
    ]);
    let rules = run(&["ip", "netns", "exec", &pod, "iptables-save", "-t", "nat"]);
    assert!(
        rules.contains(&format!(
            "-A WEIR_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN"
        )),
        "{rules}"
    );

    // Outbound from the application is captured, whatever its uid.
    assert_eq!(net.ask(Side::Pod, None, PEER_IP, 7000), "captured-outbound");
    assert_eq!(
        net.ask(Side::Pod, Some(1000), PEER_IP, 7000),
        "captured-outbound"
    );
    // Envoy's own traffic (uid 1337) goes out as it is: no loop.
    assert_eq!(
        net.ask(Side::Pod, Some(PROXY_UID), PEER_IP, 7000),
        "direct-7000"
    );
    // An excluded outbound port goes out as it is.
    assert_eq!(net.ask(Side::Pod, None, PEER_IP, 7001), "direct-7001");
    // Inbound is captured, except the probe port.
    assert_eq!(net.ask(Side::Peer, None, POD_IP, 8080), "captured-inbound");
    assert_eq!(net.ask(Side::Peer, None, POD_IP, PROBE_PORT), "probe-port");

    // A restarted pod runs weir-init again in the same namespace: no stacked jumps, and
    // capture still works.
    run(&[
        "ip",
        "netns",
        "exec",
        &pod,
        init,
        "--exclude-outbound-ports",
        "7001",
    ]);
    let rules = run(&["ip", "netns", "exec", &pod, "iptables-save", "-t", "nat"]);
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j WEIR_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules
            .matches("-A PREROUTING -p tcp -j WEIR_INBOUND")
            .count(),
        1,
        "{rules}"
    );
    assert_eq!(net.ask(Side::Pod, None, PEER_IP, 7000), "captured-outbound");
    assert_eq!(
        net.ask(Side::Pod, Some(PROXY_UID), PEER_IP, 7000),
        "direct-7000"
    );
}
