//! Linux network namespaces as pods: one "hub" namespace holding a bridge (the pod network, with no route
//! off the machine) and one namespace per pod, wired by a veth pair. A hub may also get a point-to-point
//! link to the host's namespace, for a control plane's peers that run in the test process (an API-server
//! simulator); the hub does not forward, so pods still cannot reach the host.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestbedError;

/// Prefix of every namespace this crate creates; followed by the creating process id.
const PREFIX: &str = "osmtb";

/// Runs a command, turning a non-zero exit into an error that shows the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, TestbedError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| TestbedError::Command(shown.clone(), e.to_string()))?;
    if !out.status.success() {
        return Err(TestbedError::Command(shown, String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output, TestbedError> {
    run(Command::new("ip").args(args))
}

/// A unique name for a namespace of this process.
pub fn unique_name(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{PREFIX}{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Deletes namespaces and host links left behind by test processes that no longer exist (killed runs).
pub fn sweep_stale() {
    if let Ok(out) = ip(&["-o", "link", "show"]) {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
            let name = name.split('@').next().unwrap_or("");
            let Some(rest) = name.strip_prefix("otb") else { continue };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
    let Ok(out) = ip(&["netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Kills every process still running in a namespace (a killed test run leaves its Envoys behind).
fn kill_all_in(name: &str) {
    let Ok(out) = ip(&["netns", "pids", name]) else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.chars().all(|c| c.is_ascii_digit()) {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
    }
}

/// A network namespace, deleted on drop (with anything still running in it).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Self, TestbedError> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<Output, TestbedError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The pod network: a bridge inside its own namespace. The gateway address is where the controller runs.
#[derive(Debug)]
pub struct Hub {
    pub ns: Netns,
    pub gateway: std::net::Ipv4Addr,
    pub prefix_len: u8,
    veths: AtomicU32,
}

impl Hub {
    pub fn create(gateway: std::net::Ipv4Addr, prefix_len: u8) -> Result<Self, TestbedError> {
        let ns = Netns::create(unique_name("hub"))?;
        // A fixed (locally administered) MAC: a bridge otherwise takes the lowest MAC of its ports, so
        // attaching a pod later can change the gateway's MAC and stall traffic until ARP entries expire.
        ns.ip(&["link", "add", "br0", "address", "02:00:0a:f4:00:01", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{gateway}/{prefix_len}"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { ns, gateway, prefix_len, veths: AtomicU32::new(0) })
    }

    /// A /30 link between the host's namespace (`host` on a veth named after this process) and the hub
    /// (`hub` on `host0`).
    pub fn link_host(&self, host: std::net::Ipv4Addr, hub: std::net::Ipv4Addr) -> Result<(), TestbedError> {
        let name = format!("otb{}h{}", std::process::id(), self.veths.fetch_add(1, Ordering::Relaxed));
        // Deleted with the hub namespace (a veth pair goes when either end's namespace does).
        ip(&["link", "add", &name, "type", "veth", "peer", "name", "host0", "netns", &self.ns.name])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &name])?;
        ip(&["link", "set", &name, "up"])?;
        self.ns.ip(&["addr", "add", &format!("{hub}/30"), "dev", "host0"])?;
        self.ns.ip(&["link", "set", "host0", "up"])?;
        Ok(())
    }

    /// A pod namespace with `eth0` at `addr`, attached to the bridge. Its default route points at the hub,
    /// which routes nowhere else: traffic that escapes interception dies there.
    pub fn attach(&self, role: &str, addr: std::net::Ipv4Addr) -> Result<Netns, TestbedError> {
        let pod = Netns::create(unique_name(role))?;
        let veth = format!("v{}", self.veths.fetch_add(1, Ordering::Relaxed));
        self.ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name])?;
        self.ns.ip(&["link", "set", &veth, "master", "br0", "up"])?;
        pod.ip(&["addr", "add", &format!("{addr}/{}", self.prefix_len), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&["route", "add", "default", "via", &self.gateway.to_string()])?;
        Ok(pod)
    }
}
