//! weir-init's rules applied for real with iptables in a network namespace that stands in
//! for a pod, wired by a veth pair to a second namespace that stands in for the rest of the
//! network. Listeners on 15001 and 15006 stand in for Envoy; this proves the capture, and
//! its exclusions, independently of Envoy.
//!
//! Needs root, iproute2 and iptables (`make test` installs them). Outside CI, a machine
//! without them skips with a message on stderr; in CI (CI set) the test fails instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POD_IP: &str = "10.200.0.2";
const PEER_IP: &str = "10.200.0.3";
/// The system Python: a per-user one (pyenv under /root) is not runnable by the test uids.
const PYTHON: &str = "/usr/bin/python3";

fn prerequisites() -> Result<(), String> {
    let euid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    if !std::path::Path::new(PYTHON).exists() {
        return Err(format!(
            "{PYTHON} is missing (a system Python that unprivileged uids can run)"
        ));
    }
    for tool in ["ip", "iptables-restore", "iptables-save", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success());
        if !found.unwrap_or(false) {
            return Err(format!("{tool} is missing"));
        }
    }
    Ok(())
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; removed on drop with everything running in them.
struct Net {
    pod: String,
    peer: String,
    children: Vec<Child>,
    /// The peer script, copied where every uid can read it.
    script: PathBuf,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id();
        let script = std::env::temp_dir().join(format!("weir-peer-{id}.py"));
        std::fs::copy(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/peer.py"),
            &script,
        )
        .expect("copy peer.py");
        let net = Net {
            pod: format!("weir-pod-{id}"),
            peer: format!("weir-peer-{id}"),
            children: Vec::new(),
            script,
        };
        let (pod, peer) = (net.pod.as_str(), net.peer.as_str());
        run(&["ip", "netns", "add", pod]);
        run(&["ip", "netns", "add", peer]);
        let (veth_pod, veth_peer) = (format!("wp{id}"), format!("wq{id}"));
        run(&[
            "ip", "link", "add", &veth_pod, "netns", pod, "type", "veth", "peer", "name",
            &veth_peer, "netns", peer,
        ]);
        for (ns, dev, ip) in [(pod, &veth_pod, POD_IP), (peer, &veth_peer, PEER_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn serve(&mut self, ns_is_pod: bool, port: u16, text: &str) {
        let ns = if ns_is_pod {
            self.pod.clone()
        } else {
            self.peer.clone()
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, PYTHON])
            .arg(&self.script)
            .args(["serve", &port.to_string(), text])
            .stdout(Stdio::null())
            .spawn()
            .expect("start listener");
        self.children.push(child);
        // Wait until it answers locally, inside its own namespace (loopback is never captured).
        let end = Instant::now() + Duration::from_secs(10);
        while self.ask_as(&ns, None, "127.0.0.1", port) != text {
            assert!(
                Instant::now() < end,
                "listener {text} on {ns}:{port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ask_as(&self, ns: &str, uid: Option<u32>, host: &str, port: u16) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        let out = cmd
            .arg(PYTHON)
            .arg(&self.script)
            .args(["ask", host, &port.to_string()])
            .output()
            .expect("ask");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(&self.script);
    }
}

#[test]
fn weir_init_captures_outbound_and_inbound_tcp_except_what_it_must_not() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "capture test cannot run in CI: {why}"
        );
        eprintln!(
            "SKIPPED weir_init_captures_outbound_and_inbound_tcp_except_what_it_must_not: {why}"
        );
        return;
    }
    let mut net = Net::new();
    // The rest of the network: a service, and a second one on a port the pod excludes.
    net.serve(false, 7000, "direct-7000");
    net.serve(false, 7001, "direct-7001");
    // The pod: stand-ins for Envoy's listeners, and a probe port.
    net.serve(true, 15001, "captured-outbound");
    net.serve(true, 15006, "captured-inbound");
    net.serve(true, 15021, "probe-port");

    let (pod, peer) = (net.pod.clone(), net.peer.clone());
    // Before weir-init: nothing is captured.
    assert_eq!(net.ask_as(&pod, None, PEER_IP, 7000), "direct-7000");

    let init = env!("CARGO_BIN_EXE_weir-init");
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
        rules.contains("-A WEIR_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "{rules}"
    );

    // Outbound from the application is captured, whatever the destination.
    assert_eq!(net.ask_as(&pod, None, PEER_IP, 7000), "captured-outbound");
    assert_eq!(
        net.ask_as(&pod, Some(1000), PEER_IP, 7000),
        "captured-outbound"
    );
    // Envoy's own traffic (uid 1337) goes out as it is: no loop.
    assert_eq!(net.ask_as(&pod, Some(1337), PEER_IP, 7000), "direct-7000");
    // An excluded outbound port goes out as it is.
    assert_eq!(net.ask_as(&pod, None, PEER_IP, 7001), "direct-7001");
    // Inbound is captured, except the probe port.
    assert_eq!(net.ask_as(&peer, None, POD_IP, 8080), "captured-inbound");
    assert_eq!(net.ask_as(&peer, None, POD_IP, 15021), "probe-port");

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
    assert_eq!(net.ask_as(&pod, None, PEER_IP, 7000), "captured-outbound");
    assert_eq!(net.ask_as(&pod, Some(1337), PEER_IP, 7000), "direct-7000");
}
