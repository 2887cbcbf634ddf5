//! Network namespaces as pods and hosts, for tests of traffic capture and sidecars.
//!
//! [`Net`] makes two namespaces, `pod` (10.200.0.2) and `peer` (10.200.0.3), joined by a
//! veth pair, and removes them (with everything started in them) on drop. More hosts
//! ([`Net::add_host`]) hang off the peer, which routes between them all, as a node's
//! network does between pods. Processes run in
//! them through `ip netns exec`; stand-in applications are the Python script
//! `tests/netns-peer.py`, run by the system Python so that any uid can run it.
//!
//! Needs root, iproute2, iptables, setpriv and /usr/bin/python3 (`make test` installs what is
//! missing). [`prerequisites`] says what is missing; tests skip with a message outside CI
//! and fail in CI.

use k8s_openapi::api::core::v1::Pod;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weir_core::mesh::{ENVOY_ADMIN_PORT, PROBE_PORT, PROXY_READY_PATH, PROXY_UID, ROOT_CERT_KEY};

/// The pod's address.
pub const POD_IP: &str = "10.200.0.2";
/// The peer's address.
pub const PEER_IP: &str = "10.200.0.3";
/// The system Python: a per-user one (pyenv under /root) is not runnable by test uids.
pub const PYTHON: &str = "/usr/bin/python3";

/// What is missing to run namespace tests here, if anything.
pub fn prerequisites() -> Result<(), String> {
    let euid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    if !std::path::Path::new(PYTHON).exists() {
        return Err(format!("{PYTHON} is missing"));
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

/// Returns false (after saying why on stderr) when the test cannot run here; panics in CI.
pub fn can_run(test: &str) -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} cannot run in CI: {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Runs a command to completion; panics with its stderr when it fails.
pub fn run(args: &[&str]) -> String {
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

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The pod.
    Pod,
    /// The rest of the network.
    Peer,
    /// A host added with [`Net::add_host`] (its address is `10.201.<n>.2`).
    Host(usize),
}

/// Two namespaces joined by a veth pair. See the module docs.
#[derive(Debug)]
pub struct Net {
    /// The pod namespace's name.
    pub pod: String,
    /// The peer namespace's name.
    pub peer: String,
    /// Hosts added with [`Net::add_host`]: namespace names.
    pub hosts: Vec<String>,
    /// The operator process (index in `children`) and its arguments.
    operator: Option<(usize, Vec<String>)>,
    id: String,
    children: Vec<Child>,
    /// The peer script, copied where every uid can read it.
    pub script: PathBuf,
    /// Per namespace, where its sidecar's stdout (the access log) goes.
    sidecar_stdout: std::collections::BTreeMap<String, PathBuf>,
}

impl Net {
    /// Makes the namespaces; `label` keeps parallel tests apart.
    pub fn new(label: &str) -> Net {
        let id = format!("{label}{}", std::process::id() % 100_000);
        let script = std::env::temp_dir().join(format!("weir-peer-{id}.py"));
        std::fs::copy(crate::workspace_root().join("tests/netns-peer.py"), &script)
            .expect("copy the peer script");
        let net = Net {
            pod: format!("weir-pod-{id}"),
            peer: format!("weir-peer-{id}"),
            hosts: Vec::new(),
            operator: None,
            id: id.clone(),
            children: Vec::new(),
            script,
            sidecar_stdout: Default::default(),
        };
        let (pod, peer) = (net.pod.as_str(), net.peer.as_str());
        run(&["ip", "netns", "add", pod]);
        run(&["ip", "netns", "add", peer]);
        let (veth_pod, veth_peer) = (format!("vp{id}"), format!("vq{id}"));
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
        // Service ClusterIPs (10.96.0.0/12) are routed out of the pod, as in a cluster.
        run(&["ip", "-n", pod, "route", "add", "default", "via", PEER_IP]);
        net
    }

    /// Adds a host on its own link to the peer, which routes for it: `10.201.<n>.2`.
    pub fn add_host(&mut self) -> Side {
        let n = self.hosts.len();
        let ns = format!("weir-h{n}-{}", self.id);
        run(&["ip", "netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let (veth_host, veth_peer) = (format!("v{n}h{}", self.id), format!("v{n}g{}", self.id));
        run(&[
            "ip", "link", "add", &veth_host, "netns", &ns, "type", "veth", "peer", "name",
            &veth_peer, "netns", &self.peer,
        ]);
        let gateway = format!("10.201.{n}.1");
        for (netns, dev, ip) in [
            (ns.as_str(), &veth_host, format!("10.201.{n}.2")),
            (self.peer.as_str(), &veth_peer, gateway.clone()),
        ] {
            run(&[
                "ip",
                "-n",
                netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", netns, "link", "set", dev, "up"]);
        }
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &ns, "route", "add", "default", "via", &gateway]);
        run(&[
            "ip",
            "netns",
            "exec",
            &self.peer,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        Side::Host(n)
    }

    /// Captures the TCP payloads crossing the link between `side` and the peer (as seen on
    /// the peer's end) into a file, from now until the net is dropped; returns the file.
    pub fn sniff(&mut self, side: Side) -> PathBuf {
        let link = match side {
            Side::Pod => format!("vq{}", self.id),
            Side::Host(n) => format!("v{n}g{}", self.id),
            Side::Peer => panic!("sniff a link to the peer: Side::Pod or Side::Host"),
        };
        let file = crate::scratch_dir("sniff").join(format!("{link}.bin"));
        std::fs::write(&file, b"").expect("capture file");
        let script = self.script.to_string_lossy().into_owned();
        let path = file.to_string_lossy().into_owned();
        let mut child = self
            .command(Side::Peer, &[PYTHON, &script, "sniff", &link, &path])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the capture");
        // The script says "ready" once its socket is bound to the link.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("the capture's first line");
        assert_eq!(line.trim(), "ready", "the capture did not start");
        self.children.push(child);
        file
    }

    /// The address of a namespace.
    pub fn ip(&self, side: Side) -> String {
        match side {
            Side::Pod => POD_IP.into(),
            Side::Peer => PEER_IP.into(),
            Side::Host(n) => format!("10.201.{n}.2"),
        }
    }

    /// The namespace's name.
    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::Pod => &self.pod,
            Side::Peer => &self.peer,
            Side::Host(n) => &self.hosts[n],
        }
    }

    /// `ip netns exec <ns>` and the rest, as a command to spawn.
    pub fn command(&self, side: Side, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(side)]).args(args);
        cmd
    }

    /// Runs `args` in a namespace with `input` on its standard input; its standard output.
    pub fn run_with_input(&self, side: Side, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command(side, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn in the namespace");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write the input");
        let out = child.wait_with_output().expect("wait for it");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running process in a namespace; it is killed on drop.
    pub fn spawn(&mut self, side: Side, args: &[&str]) -> &mut Child {
        let child = self
            .command(side, args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push(child);
        self.children.last_mut().expect("just pushed")
    }

    /// As [`Net::spawn`], its stdout written to `stdout`.
    fn spawn_to(&mut self, side: Side, args: &[&str], stdout: &Path) {
        let file = std::fs::File::create(stdout).expect("create the stdout file");
        let child = self
            .command(side, args)
            .stdin(Stdio::null())
            .stdout(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push(child);
    }

    /// The JSON access log lines the sidecar in `side` has written so far.
    pub fn access_log(&self, side: Side) -> Vec<serde_json::Value> {
        let Some(path) = self.sidecar_stdout.get(self.name(side)) else {
            return Vec::new();
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A TCP listener answering `text` on `port`, once it answers.
    pub fn serve(&mut self, side: Side, port: u16, text: &str) {
        self.start_peer(side, "serve", port, text);
        self.wait_for(&format!("{text} on {port}"), || {
            self.ask(side, None, "127.0.0.1", port) == text
        });
    }

    /// An HTTP server answering `text` on `port`, once it answers.
    pub fn serve_http(&mut self, side: Side, port: u16, text: &str) {
        self.start_peer(side, "http", port, text);
        let url = format!("http://127.0.0.1:{port}/");
        self.wait_for(&format!("{text} on {port}"), || {
            self.get(side, &url) == format!("200 {text}")
        });
    }

    fn start_peer(&mut self, side: Side, mode: &str, port: u16, text: &str) {
        let script = self.script.to_string_lossy().into_owned();
        let port = port.to_string();
        let child = self
            .command(side, &[PYTHON, &script, mode, &port, text])
            .stdout(Stdio::null())
            .spawn()
            .expect("start peer");
        self.children.push(child);
    }

    /// Polls `check` for up to 20 s.
    pub fn wait_for(&self, what: &str, check: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn peer_output(&self, side: Side, uid: Option<u32>, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(side)]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            cmd.args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"]);
        }
        let out = cmd
            .arg(PYTHON)
            .arg(&self.script)
            .args(args)
            .output()
            .expect("run the peer script");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Connects to `host:port` from a namespace (as `uid`, or root) and returns the answer.
    pub fn ask(&self, side: Side, uid: Option<u32>, host: &str, port: u16) -> String {
        self.peer_output(side, uid, &["ask", host, &port.to_string()])
    }

    /// `GET url` from a namespace: `<status> <first line of the body>`.
    pub fn get(&self, side: Side, url: &str) -> String {
        self.peer_output(side, None, &["get", url])
    }

    /// `GET url` from a namespace: the whole body.
    pub fn fetch(&self, side: Side, url: &str) -> String {
        self.peer_output(side, None, &["body", url])
    }

    /// A counter or gauge of the operator started by [`Net::start_operator`] (its admin
    /// port), 0 when absent.
    pub fn operator_metric(&self, name: &str) -> u64 {
        let text = self.fetch(Side::Peer, "http://127.0.0.1:15099/metrics");
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// `GET url` with one header (`Name: value`).
    pub fn get_with(&self, side: Side, url: &str, header: &str) -> String {
        self.peer_output(side, None, &["get", url, header])
    }

    /// Makes `names` resolve to `ip` inside a namespace (`ip netns exec` mounts
    /// /etc/netns/<ns>/hosts over /etc/hosts).
    pub fn hosts(&self, side: Side, entries: &[(&str, &str)]) {
        let dir = PathBuf::from(format!("/etc/netns/{}", self.name(side)));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        let mut text = "127.0.0.1 localhost\n".to_string();
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {names}\n"));
        }
        std::fs::write(dir.join("hosts"), text).expect("write hosts");
    }
}

/// Where the mesh's control plane listens in the peer namespace.
pub const XDS_ADDR: &str = "10.200.0.3:15010";

impl Net {
    /// Runs `weir-operator local` on `dir` in the peer namespace, serving xDS over TLS with
    /// the CA kept in `ca_dir` (generated there when absent), with `extra` arguments;
    /// returns once the CA exists.
    pub fn start_operator(&mut self, dir: &Path, ca_dir: &Path, extra: &[&str]) {
        let operator = crate::workspace_binary("weir-operator").expect("weir-operator");
        let (op, dir_arg, ca_arg) = (
            operator.to_string_lossy().into_owned(),
            dir.to_string_lossy().into_owned(),
            ca_dir.to_string_lossy().into_owned(),
        );
        let mut args = vec![
            op.as_str(),
            "local",
            "--dir",
            &dir_arg,
            "--xds-addr",
            XDS_ADDR,
            "--admin-addr",
            "127.0.0.1:15099",
            "--xds-name",
            PEER_IP,
            "--ca-dir",
            &ca_arg,
        ];
        args.extend(extra);
        self.spawn(Side::Peer, &args);
        self.operator = Some((
            self.children.len() - 1,
            args.iter().map(|a| a.to_string()).collect(),
        ));
        let root = ca_dir.join("ca.crt");
        self.wait_for("the operator's CA", || root.exists());
    }

    /// Stops the operator and starts it again with the same arguments (its CA and links
    /// come back from its CA directory); returns once it answers.
    pub fn restart_operator(&mut self) {
        let (index, args) = self.operator.clone().expect("start_operator first");
        let old = &mut self.children[index];
        let _ = old.kill();
        let _ = old.wait();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(Side::Peer, &args);
        self.operator = Some((
            self.children.len() - 1,
            args.iter().map(|a| a.to_string()).collect(),
        ));
        self.wait_for("the operator to answer again", || {
            self.get(Side::Peer, "http://127.0.0.1:15099/readyz")
                .starts_with("200")
        });
    }

    /// Makes a namespace an injected pod: the injector's output for `pod` applied for real
    /// (weir-init's rules, Envoy from the injected bootstrap as gid 1337), with the files the
    /// kubelet would mount: the mesh root from `ca_dir` and a token. Returns once the
    /// sidecar is ready.
    pub fn start_sidecar(&mut self, side: Side, pod: &Pod, ca_dir: &Path) {
        use weir_webhook::inject::{inject, MeshConfig, CA_DIR, PROXY_CONTAINER, TOKEN_DIR};
        let init = crate::workspace_binary("weir-init").expect("weir-init");
        let envoy = crate::envoy_bin().expect("envoy");
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let injected = inject(
            pod,
            &namespace,
            &MeshConfig {
                xds_address: XDS_ADDR.into(),
                ..MeshConfig::default()
            },
        )
        .pod;
        // What the kubelet mounts: the root ConfigMap and the projected token (local mode
        // does not review tokens; Envoy sends it all the same).
        let mounts = crate::scratch_dir(&format!("mounts-{name}"));
        let (ca_mount, token_mount) = (mounts.join("ca"), mounts.join("tokens"));
        std::fs::create_dir_all(&ca_mount).expect("ca mount");
        std::fs::create_dir_all(&token_mount).expect("token mount");
        std::fs::copy(ca_dir.join("ca.crt"), ca_mount.join(ROOT_CERT_KEY)).expect("root");
        std::fs::write(token_mount.join("token"), "local-mode-token").expect("token");
        let spec = injected.spec.expect("spec");
        let containers = spec.init_containers.unwrap_or_default();
        let init_args = containers
            .iter()
            .find(|c| c.name == "weir-init")
            .and_then(|c| c.args.clone())
            .unwrap_or_default();
        let proxy = containers.iter().find(|c| c.name == PROXY_CONTAINER);
        // The environment the kubelet would give the container (its field references
        // resolved to the pod's name and namespace).
        let proxy_env: Vec<String> = proxy
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let value = match e.value {
                    Some(v) => v,
                    None if e.name == "POD_NAME" => name.clone(),
                    None => namespace.clone(),
                };
                format!("{}={value}", e.name)
            })
            .collect();
        let proxy_args: Vec<String> = proxy
            .and_then(|c| c.args.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                a.replace("$(POD_NAME)", &name)
                    .replace("$(POD_NAMESPACE)", &namespace)
                    .replace(CA_DIR, &ca_mount.to_string_lossy())
                    .replace(TOKEN_DIR, &token_mount.to_string_lossy())
            })
            .collect();
        let init = init.to_string_lossy().into_owned();
        let mut init_cmd = vec!["ip", "netns", "exec", self.name(side), init.as_str()];
        init_cmd.extend(init_args.iter().map(String::as_str));
        run(&init_cmd);
        let envoy = envoy.to_string_lossy().into_owned();
        let proxy_gid = PROXY_UID.to_string();
        let log = mounts.join("envoy.log").to_string_lossy().into_owned();
        let mut envoy_cmd = vec![
            "setpriv",
            "--regid",
            proxy_gid.as_str(),
            "--clear-groups",
            "env",
        ];
        envoy_cmd.extend(proxy_env.iter().map(String::as_str));
        envoy_cmd.push(envoy.as_str());
        envoy_cmd.extend(proxy_args.iter().map(String::as_str));
        envoy_cmd.extend(["--log-path", log.as_str()]);
        let stdout = mounts.join("envoy.stdout");
        self.spawn_to(side, &envoy_cmd, &stdout);
        self.sidecar_stdout
            .insert(self.name(side).to_string(), stdout);
        self.wait_for(&format!("{name}'s sidecar to be ready"), || {
            self.get(
                side,
                &format!("http://127.0.0.1:{PROBE_PORT}{PROXY_READY_PATH}"),
            )
            .starts_with("200")
        });
    }

    /// The usual single-pod setup: the operator on `dir` (CA in a scratch directory) and the
    /// pod namespace as injected pod `default/productpage`, with `hosts` (ClusterIP, names)
    /// resolvable in it.
    pub fn start_mesh_and_sidecar(&mut self, dir: &Path, hosts: &[(&str, &str)]) {
        let ca_dir = crate::scratch_dir("mesh-ca");
        self.start_operator(dir, &ca_dir, &[]);
        let pod: Pod = serde_saphyr::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: productpage, namespace: default}\nspec:\n  containers: [{name: app, image: app:1}]\n",
        )
        .expect("pod");
        self.start_sidecar(Side::Pod, &pod, &ca_dir);
        self.hosts(Side::Pod, hosts);
    }

    /// Runs `weir-testapp` with `args` in a namespace and returns what it printed.
    pub fn testapp(&self, side: Side, args: &[&str]) -> String {
        let app = crate::workspace_binary("weir-testapp").expect("weir-testapp");
        let out = self
            .command(side, &[&app.to_string_lossy()])
            .args(args)
            .output()
            .expect("run weir-testapp");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts a `weir-testapp serve` in a namespace (killed on drop).
    pub fn serve_app(&mut self, side: Side, args: &[&str]) {
        let app = crate::workspace_binary("weir-testapp").expect("weir-testapp");
        let app = app.to_string_lossy().into_owned();
        let mut full = vec![app.as_str(), "serve"];
        full.extend(args);
        self.spawn(side, &full);
    }

    /// The value of one Envoy stat in the pod (from its admin port), 0 when absent.
    pub fn envoy_stat(&self, name: &str) -> u64 {
        self.envoy_stat_in(Side::Pod, name)
    }

    /// The value of one Envoy stat of the sidecar in `side`, 0 when absent.
    pub fn envoy_stat_in(&self, side: Side, name: &str) -> u64 {
        let text = self.get(
            side,
            &format!(
                "http://127.0.0.1:{ENVOY_ADMIN_PORT}/stats?filter=^{}$",
                crate::envoy::regex_escape(name)
            ),
        );
        text.rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.iter().chain([&self.pod, &self.peer]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = std::fs::remove_file(&self.script);
    }
}
