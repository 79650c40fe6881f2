//! What a benchmark server reports about its replica, every 250 ms, in a
//! file the harness reads: one serde type, written by one side and read by
//! the other, so neither depends on the other's spelling of a key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A replica's state and counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaMetrics {
    /// Membership epoch of its current core.
    #[serde(default)]
    pub epoch: u64,
    /// Current view.
    pub view: u64,
    /// Whether this replica is the primary of it.
    pub primary: bool,
    /// Normal operation (not changing views).
    pub normal: bool,
    /// Highest sequence number delivered.
    pub delivered: u64,
    /// Requests delivered, in batches.
    pub delivered_requests: u64,
    /// Batches proposed as primary.
    pub proposed_batches: u64,
    /// View changes started or joined.
    pub view_changes: u64,
    /// State transfers completed.
    pub state_transfers: u64,
    /// Request timers restarted because the replica was behind.
    pub timers_restarted: u64,
    /// Whether it is rejoining (casting no vote until it is safe to).
    #[serde(default)]
    pub rejoining: bool,
    /// Requests it forwarded because the primary had not proposed them in
    /// time (clients sending to every replica).
    #[serde(default)]
    pub late_forwards: u64,
    /// View changes it started because the primary's batches kept leaving
    /// out a request.
    #[serde(default)]
    pub skip_suspicions: u64,
    /// The runtime's counters, by name.
    pub counters: BTreeMap<String, u64>,
    /// Queue depths, by queue.
    pub queues: BTreeMap<String, u64>,
}

impl ReplicaMetrics {
    /// Writes `self` to `path` atomically (a temporary file, renamed), so a
    /// reader never sees half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }

    /// The last metrics written to `path`, if any.
    pub fn read(path: &Path) -> Option<ReplicaMetrics> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_written_by_a_server_read_back_the_same() {
        let dir = std::env::temp_dir().join(format!("palisade-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics-0.json");
        let m = ReplicaMetrics {
            view: 3,
            primary: true,
            delivered: 12,
            counters: BTreeMap::from([("replies_sent".to_string(), 40)]),
            queues: BTreeMap::from([("peer_queue".to_string(), 2)]),
            ..ReplicaMetrics::default()
        };
        m.write(&path).unwrap();
        assert_eq!(ReplicaMetrics::read(&path), Some(m));
        assert_eq!(ReplicaMetrics::read(&dir.join("missing.json")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
