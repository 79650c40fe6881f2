//! The library parts of the CLI, on their own: `keygen`'s output and the
//! registry of services. (Here rather than as unit tests, so that the
//! crate is not compiled a second time for three tests.)

use palisade::keygen::{client_key_file, keygen, replica_key_file, KeygenOptions};
use palisade::registry::{find, names};
use palisade_core::{Mode, ReplicaId};
use palisade_wire::{keys, RequestAuth};
use std::path::{Path, PathBuf};

fn opts(dir: &Path) -> KeygenOptions {
    KeygenOptions {
        replicas: 4,
        out: dir.to_path_buf(),
        mode: Mode::Bft,
        f: None,
        addresses: vec![],
        base_port: 7000,
        cluster_id: Some(77),
        request_auth: RequestAuth::default(),
        requests_to_all: false,
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("palisade-keygen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn keygen_writes_a_configuration_that_loads_and_matches_its_keys() {
    let dir = tempdir("ok");
    let c = keygen(&opts(&dir)).unwrap();
    assert_eq!((c.cluster_id, c.membership.n(), c.membership.f()), (77, 4, 1));
    assert_eq!(c.replicas[&ReplicaId(3)].address.to_string(), "127.0.0.1:7003");
    for id in 0..4 {
        let key = keys::read_secret(&replica_key_file(&dir, ReplicaId(id))).unwrap();
        assert_eq!(key.verifying_key(), c.replicas[&ReplicaId(id)].public_key);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(client_key_file(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(keygen(&opts(&dir)).unwrap_err().contains("exists"), "never overwrites a cluster");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn impossible_sizes_are_explained() {
    let dir = tempdir("bad");
    let mut o = opts(&dir);
    o.replicas = 3;
    o.f = Some(1);
    assert!(keygen(&o).unwrap_err().contains("at least 4"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names_are_unique_and_found() {
    let names = names();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate service name");
    for n in names {
        assert_eq!(find(n).map(|s| s.name), Some(n));
    }
    assert!(find("nope").is_none());
}

#[test]
fn host_names_are_kept_as_written_and_looked_up_when_dialled() {
    let dir = tempdir("names");
    let mut o = opts(&dir);
    o.addresses = (0..4)
        .map(|i| palisade_wire::address::HostPort::parse(&format!("palisade-{i}.palisade:7000")).unwrap())
        .collect();
    keygen(&o).unwrap();
    let loaded = palisade_wire::ClusterConfig::load(&dir).unwrap();
    assert_eq!(loaded.replicas[&ReplicaId(2)].address.as_str(), "palisade-2.palisade:7000");
    assert_eq!(loaded.replicas[&ReplicaId(2)].address.literal(), None);
    // The chain of epochs carries the same text.
    assert_eq!(loaded.genesis().members[1].address, "palisade-1.palisade:7000");
    std::fs::remove_dir_all(&dir).unwrap();
}
