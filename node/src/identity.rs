//! The node's identity: the cluster its data directory belongs to and the Raft member it
//! is, recorded in the data directory, and the decision a node with an empty data
//! directory takes (create the cluster, join it, or wait).
//!
//! A member id is used by one data directory only: a node that lost its data directory
//! never votes or acknowledges as the member it was, but joins as its ordinal's next
//! member (see [`crate::registry::MEMBER_STRIDE`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// The file in the data directory that records the identity.
const FILE: &str = "identity.json";

/// What a data directory says about the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster the data belongs to.
    pub cluster_id: String,
    /// The configured id (StatefulSet ordinal) it was created under.
    pub ordinal: u64,
    /// The Raft member id.
    pub member: u64,
    /// Whether this node created the cluster (it finishes creating it after a crash).
    #[serde(default)]
    pub founder: bool,
}

/// A data directory as found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing in it: the node has yet to create or join a cluster.
    Empty,
    /// Data written before identities were recorded: the member id is the ordinal.
    Unrecorded,
    /// A recorded identity.
    Recorded(Identity),
}

/// A new cluster id: 32 hex digits from the clock, the process and `seed`.
pub fn new_cluster_id(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = Sha256::new()
        .chain_update(now.to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .chain_update(seed.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Io { what, source }
}

/// Reads the identity of the data directory of the node configured as `ordinal`; a
/// directory created under another ordinal is refused.
pub fn load(data_dir: &Path, ordinal: u64) -> Result<Found, NodeError> {
    let file = path(data_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // RocksDB's CURRENT file exists once the engine has opened the directory.
            return Ok(match data_dir.join("db").join("CURRENT").exists() {
                true => Found::Unrecorded,
                false => Found::Empty,
            });
        }
        Err(e) => return Err(io(format!("reading {}", file.display()))(e)),
    };
    let identity: Identity = serde_json::from_str(&text)
        .map_err(|e| NodeError::Identity(format!("{}: {e}", file.display())))?;
    if identity.ordinal != ordinal {
        return Err(NodeError::Identity(format!(
            "{} belongs to node {} (member {}), not to node {ordinal}: give this node its own data directory",
            data_dir.display(),
            identity.ordinal,
            identity.member
        )));
    }
    Ok(Found::Recorded(identity))
}

/// Records `identity` in the data directory (written whole, then renamed into place).
pub fn save(data_dir: &Path, identity: &Identity) -> Result<(), NodeError> {
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let file = path(data_dir);
    let partial = data_dir.join(format!("{FILE}.partial"));
    let text = serde_json::to_vec_pretty(identity).expect("an identity serializes");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::fs::File::create(&partial)?;
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&partial, &file)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(io(format!("writing {}", file.display())))
}

/// What a seed answered about itself, as a starting node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The seed's configured id.
    pub ordinal: u64,
    /// The cluster it belongs to; `None` while its own data directory is empty.
    pub cluster: Option<String>,
}

/// What a node with an empty data directory does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create the cluster: no seed belongs to one, every seed answered, and this node
    /// has the lowest id of them all.
    Create,
    /// Join the cluster a seed belongs to, as a new member.
    Join,
    /// Ask again later, for this reason.
    Wait(String),
}

/// Decides for the node configured as `ordinal` from its seeds' answers (`None`: no
/// answer). A node never creates a cluster while a seed is silent, so a node that lost
/// its data directory cannot found a second cluster beside the one its peers hold.
pub fn decide(ordinal: u64, answers: &[Option<Peer>]) -> Decision {
    let peers: Vec<&Peer> = answers.iter().flatten().collect();
    if peers.iter().any(|p| p.cluster.is_some()) {
        return Decision::Join;
    }
    let silent = answers.len() - peers.len();
    if silent > 0 {
        return Decision::Wait(format!("{silent} of {} seeds not answering", answers.len()));
    }
    match peers.iter().map(|p| p.ordinal).min() {
        Some(lowest) if lowest <= ordinal => Decision::Wait(format!(
            "node {lowest} creates the cluster (no seed belongs to one yet)"
        )),
        _ => Decision::Create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(ordinal: u64) -> Option<Peer> {
        Some(Peer {
            ordinal,
            cluster: None,
        })
    }

    #[test]
    fn only_the_lowest_node_creates_and_only_once_every_seed_answered_empty() {
        assert_eq!(decide(0, &[]), Decision::Create);
        assert_eq!(decide(0, &[fresh(1), fresh(2)]), Decision::Create);
        assert!(matches!(
            decide(1, &[fresh(0), fresh(2)]),
            Decision::Wait(_)
        ));
        assert!(matches!(decide(0, &[fresh(1), None]), Decision::Wait(_)));
        // Two nodes configured with one id never both create.
        assert!(matches!(decide(1, &[fresh(1)]), Decision::Wait(_)));
    }

    #[test]
    fn a_node_that_lost_its_data_joins_the_cluster_its_peers_hold() {
        let member = Some(Peer {
            ordinal: 1,
            cluster: Some("c1".into()),
        });
        assert_eq!(decide(0, &[member.clone(), None]), Decision::Join);
        assert_eq!(decide(2, &[fresh(0), member]), Decision::Join);
    }

    #[test]
    fn the_identity_is_kept_and_another_node_s_directory_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(load(dir.path(), 2).expect("loads"), Found::Empty);
        let identity = Identity {
            cluster_id: "c1".into(),
            ordinal: 2,
            member: 1002,
            founder: false,
        };
        save(dir.path(), &identity).expect("saved");
        assert_eq!(
            load(dir.path(), 2).expect("loads"),
            Found::Recorded(identity)
        );
        assert!(matches!(load(dir.path(), 1), Err(NodeError::Identity(_))));
        std::fs::remove_file(dir.path().join(FILE)).expect("removed");
        std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
        std::fs::write(dir.path().join("db").join("CURRENT"), "MANIFEST-000001\n")
            .expect("CURRENT");
        assert_eq!(load(dir.path(), 2).expect("loads"), Found::Unrecorded);
    }
}
