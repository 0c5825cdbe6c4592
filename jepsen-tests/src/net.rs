//! The run's private network: a bridge in a namespace of its own and one namespace per
//! process (node, router, broker, the harness's clients), each on the bridge through a
//! veth pair with an address of its own. Partitions are nftables rules inside the
//! members' namespaces; nothing is added to the machine's own namespace, and `Drop`
//! removes every namespace this object made.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The subnet of every run (each run has its own bridge, so runs never meet).
const SUBNET: [u8; 3] = [10, 232, 0];
/// The nftables table holding a member's partition rules.
const TABLE: &str = "sentinel_jepsen";

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<()> {
    let done = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !done.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces `<prefix>-<member>` on one bridge.
pub struct Network {
    prefix: String,
    namespaces: Vec<String>,
    addresses: BTreeMap<String, Ipv4Addr>,
}

impl Network {
    /// Creates the bridge namespace of a network whose namespaces are named `<prefix>-*`.
    pub fn create(prefix: &str) -> Result<Network> {
        let mut network = Network {
            prefix: prefix.to_owned(),
            namespaces: Vec::new(),
            addresses: BTreeMap::new(),
        };
        let bridge = network.namespace("bridge")?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// The prefix of this network's namespace names, unique on the machine.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates namespace `<prefix>-<name>` (recorded first, so `Drop` removes it).
    fn namespace(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.namespaces.push(ns.clone());
        ip(&["netns", "add", &ns])?;
        Ok(ns)
    }

    /// Adds `member` at the subnet's address `host`; its address.
    pub fn add(&mut self, member: &str, host: u8) -> Result<Ipv4Addr> {
        let ns = self.namespace(member)?;
        let bridge = format!("{}-bridge", self.prefix);
        let port = format!("p{}", self.addresses.len());
        let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host);
        ip(&[
            "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.addresses.insert(member.to_owned(), address);
        Ok(address)
    }

    /// The address of `member`.
    pub fn address(&self, member: &str) -> Ipv4Addr {
        self.addresses[member]
    }

    /// `program` run inside `member`'s namespace.
    pub fn command(&self, member: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &format!("{}-{member}", self.prefix),
            program,
        ]);
        command
    }

    /// Moves the calling thread into `member`'s namespace: threads it starts afterwards,
    /// and every socket they open, are there too.
    pub fn enter(&self, member: &str) -> Result<()> {
        let path = format!("/run/netns/{}-{member}", self.prefix);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns(2) on an open namespace file descriptor; it changes only the
        // calling thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes each member drop every packet from the members `grudge` lists for it, and
    /// nothing else (a member not listed drops nothing).
    pub fn set_grudge(&self, grudge: &BTreeMap<String, BTreeSet<String>>) -> Result<()> {
        for member in self.addresses.keys() {
            let blocked: Vec<String> = grudge
                .get(member)
                .into_iter()
                .flatten()
                .map(|m| self.addresses[m].to_string())
                .collect();
            let mut rules = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
            if !blocked.is_empty() {
                rules += &format!(
                    "table inet {TABLE} {{\n chain input {{\n  type filter hook input priority 0;\n  \
                     ip saddr {{ {} }} drop\n }}\n}}\n",
                    blocked.join(", ")
                );
            }
            self.nft(member, &rules)?;
        }
        Ok(())
    }

    /// Loads `rules` into `member`'s nftables.
    fn nft(&self, member: &str, rules: &str) -> Result<()> {
        let mut child = self
            .command(member, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (Debian package nftables)")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())?;
        let done = child.wait_with_output()?;
        if !done.status.success() {
            bail!(
                "nft in {member}: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}
