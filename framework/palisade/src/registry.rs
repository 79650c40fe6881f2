//! Every service a replica can run, registered in one place: a new service
//! reaches `palisade replica --service NAME`, `palisade cluster up` and the
//! benchmark harness by one entry here.

use ed25519_dalek::SigningKey;
use palisade_core::{ReplicaId, Service};
use palisade_runtime::{spawn_replica, ReplicaHandle, RuntimeConfig};
use palisade_services::counter::Counter;
use palisade_services::echo::Echo;
use palisade_services::fs::FsService;
use palisade_services::kv::KvStore;
use palisade_services::register::Register;
use palisade_wire::ClusterConfig;

/// Starts a replica of a cluster running a fresh instance of a service.
pub type Spawn = fn(&ClusterConfig, ReplicaId, SigningKey, RuntimeConfig) -> Result<ReplicaHandle, String>;

/// A service replicas can run.
pub struct Registered {
    /// What `--service` takes.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Starts a replica running it.
    pub spawn: Spawn,
}

fn spawn<S: Service + Default + Send + Sync + 'static>(
    cluster: &ClusterConfig,
    me: ReplicaId,
    key: SigningKey,
    cfg: RuntimeConfig,
) -> Result<ReplicaHandle, String> {
    spawn_replica(cluster, me, key, S::default(), cfg)
}

/// The services, by name.
pub const SERVICES: &[Registered] = &[
    Registered { name: "kv", about: "a key-value map (palisade kv)", spawn: spawn::<KvStore> },
    Registered { name: "counter", about: "a counter (palisade counter)", spawn: spawn::<Counter> },
    Registered { name: "register", about: "a read/write register", spawn: spawn::<Register> },
    Registered { name: "fs", about: "a file system (palisade fs mount)", spawn: spawn::<FsService> },
    Registered { name: "echo", about: "replies of a requested size (the benchmark's service)", spawn: spawn::<Echo> },
];

/// The service called `name`.
pub fn find(name: &str) -> Option<&'static Registered> {
    SERVICES.iter().find(|s| s.name == name)
}

/// Every name, for `--service`'s possible values.
pub fn names() -> Vec<&'static str> {
    SERVICES.iter().map(|s| s.name).collect()
}
