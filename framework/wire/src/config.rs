//! The cluster configuration: `cluster.toml`, public and shared by every
//! replica and client. Secret keys are separate files (see [`crate::keys`]).
//!
//! ```toml
//! cluster_id = 7316482649032155
//! mode = "bft"              # or "cft"
//! f = 1
//! request_auth = "authenticators" # or "signatures", or "trust-primary"
//! requests_to_all = false   # true: clients send every request to every replica
//! max_frame_bytes = 4194304
//!
//! [view_manager]
//! public_key = "64 hex digits"
//!
//! [[replicas]]
//! id = 0
//! address = "127.0.0.1:7000"
//! public_key = "64 hex digits"
//! ```

use crate::address::HostPort;
use crate::frame::DEFAULT_MAX_FRAME_BYTES;
use crate::keys::{self, public_hex};
use ed25519_dalek::VerifyingKey;
use palisade_core::{Membership, Mode, ReplicaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A configuration problem, naming the field and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The field, as a TOML path (`replicas[2].address`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}; {}", self.file, self.field, self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// How a backup knows that a request inside a PRE-PREPARE came from its
/// client (docs/security.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestAuth {
    /// Clients sign and add one MAC per replica; the primary checks the
    /// signature before proposing, a backup its own MAC (the signature
    /// only when the MAC fails). Byzantine fault tolerant end to end at
    /// about one signature check a request.
    #[default]
    Authenticators,
    /// Clients sign, and every replica checks every signature.
    Signatures,
    /// Clients do not sign, and backups trust the primary with the
    /// requests it proposes: a faulty primary can order requests no client
    /// sent. For trusted deployments and measurements only.
    TrustPrimary,
}

impl RequestAuth {
    /// Whether clients sign their requests.
    pub fn clients_sign(self) -> bool {
        self != RequestAuth::TrustPrimary
    }
}

impl std::str::FromStr for RequestAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "authenticators" => Ok(RequestAuth::Authenticators),
            "signatures" => Ok(RequestAuth::Signatures),
            "trust-primary" => Ok(RequestAuth::TrustPrimary),
            other => Err(format!(
                "unknown request authentication {other:?}: use authenticators, signatures or trust-primary"
            )),
        }
    }
}

impl fmt::Display for RequestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestAuth::Authenticators => "authenticators",
            RequestAuth::Signatures => "signatures",
            RequestAuth::TrustPrimary => "trust-primary",
        })
    }
}

/// The file as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Distinguishes clusters, so messages of one are never accepted by another.
    pub cluster_id: u64,
    /// "bft" or "cft".
    pub mode: String,
    /// Faults tolerated.
    pub f: usize,
    /// How backups know a proposed request came from its client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_auth: Option<RequestAuth>,
    /// The older setting: `true` reads as `signatures`, `false` as
    /// `trust-primary` (a file with neither gets `authenticators`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_signatures: Option<bool>,
    /// Whether clients send every request to every replica.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requests_to_all: bool,
    /// Largest frame payload in bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// The administrator's key.
    pub view_manager: ViewManagerEntry,
    /// The replicas.
    pub replicas: Vec<ReplicaEntry>,
}

fn default_max_frame_bytes() -> usize {
    DEFAULT_MAX_FRAME_BYTES
}

/// `[view_manager]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewManagerEntry {
    /// Hex ed25519 public key.
    pub public_key: String,
}

/// One `[[replicas]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Replica id.
    pub id: u32,
    /// `ip:port` or `host:port` it listens on, for replicas and clients
    /// alike; a host name is looked up at each connection attempt.
    pub address: String,
    /// Hex ed25519 public key.
    pub public_key: String,
}

/// A replica as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Where it listens.
    pub address: HostPort,
    /// Its identity key.
    pub public_key: VerifyingKey,
}

/// A validated cluster configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster id.
    pub cluster_id: u64,
    /// Members, f and mode.
    pub membership: Membership,
    /// How backups know a proposed request came from its client.
    pub request_auth: RequestAuth,
    /// Clients send every request to every replica (BFT-SMaRt's way), not
    /// to the primary alone: the backups then hold the load the primary is
    /// offered, which its batches are watched against (`batch_watch_skips`
    /// in the replicas' protocol parameters), at the price of every replica
    /// receiving and checking every request.
    pub requests_to_all: bool,
    /// Largest frame payload.
    pub max_frame_bytes: usize,
    /// The view manager's key.
    pub view_manager: VerifyingKey,
    /// Every replica.
    pub replicas: BTreeMap<ReplicaId, ReplicaInfo>,
}

/// The configuration file's name inside a configuration directory.
pub const CLUSTER_FILE: &str = "cluster.toml";

impl ClusterConfig {
    /// Reads and validates `dir/cluster.toml`.
    pub fn load(dir: &Path) -> Result<ClusterConfig, ConfigError> {
        let path = dir.join(CLUSTER_FILE);
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            problem: e.to_string(),
            fix: "create one with `palisade keygen --replicas 4 --out DIR`".into(),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<ClusterConfig, ConfigError> {
        let err = |field: &str, problem: String, fix: &str| ConfigError {
            file: file.to_string(),
            field: field.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let raw: ClusterFile = toml::from_str(text).map_err(|e| {
            let problem = e.message().to_string();
            let field = e
                .span()
                .map(|s| {
                    let line = text[..s.start].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(syntax)".into());
            err(&field, problem, "see docs/configuration.md for every field")
        })?;
        if let (Some(auth), Some(signatures)) = (raw.request_auth, raw.client_signatures) {
            return Err(err(
                "client_signatures",
                format!("set together with request_auth = \"{auth}\" (client_signatures = {signatures})"),
                "keep request_auth and remove client_signatures, the older setting",
            ));
        }
        let mode = match raw.mode.as_str() {
            "bft" => Mode::Bft,
            "cft" => Mode::Cft,
            other => return Err(err("mode", format!("unknown mode {other:?}"), "use \"bft\" or \"cft\"")),
        };
        if raw.max_frame_bytes < 1024 || raw.max_frame_bytes > (1 << 30) {
            return Err(err(
                "max_frame_bytes",
                format!("{} is out of range", raw.max_frame_bytes),
                "use a value between 1024 and 1073741824",
            ));
        }
        let view_manager = keys::parse_public(&raw.view_manager.public_key, "view_manager.public_key")
            .map_err(|e| err("view_manager.public_key", e.to_string(), "copy the key printed by `palisade keygen`"))?;
        let mut replicas = BTreeMap::new();
        for (i, r) in raw.replicas.iter().enumerate() {
            let field = |name: &str| format!("replicas[{i}].{name}");
            let address = HostPort::parse(&r.address).map_err(|problem| {
                err(&field("address"), problem, "write it like \"127.0.0.1:7000\" or \"replica-0.example:7000\"")
            })?;
            let public_key = keys::parse_public(&r.public_key, &field("public_key"))
                .map_err(|e| err(&field("public_key"), e.to_string(), "copy the key printed by `palisade keygen`"))?;
            if replicas.insert(ReplicaId(r.id), ReplicaInfo { address, public_key }).is_some() {
                return Err(err(
                    &field("id"),
                    format!("replica id {} appears twice", r.id),
                    "give every replica its own id",
                ));
            }
        }
        let membership = Membership::new(replicas.keys().copied().collect(), raw.f, mode)
            .map_err(|e| err("f", e.to_string(), "lower f or add replicas (BFT needs 3f+1, CFT 2f+1)"))?;
        Ok(ClusterConfig {
            cluster_id: raw.cluster_id,
            membership,
            request_auth: raw.request_auth.unwrap_or(match raw.client_signatures {
                Some(true) => RequestAuth::Signatures,
                Some(false) => RequestAuth::TrustPrimary,
                None => RequestAuth::Authenticators,
            }),
            requests_to_all: raw.requests_to_all,
            max_frame_bytes: raw.max_frame_bytes,
            view_manager,
            replicas,
        })
    }

    /// The file form, for writing.
    pub fn to_file(&self) -> ClusterFile {
        ClusterFile {
            cluster_id: self.cluster_id,
            mode: match self.membership.mode() {
                Mode::Bft => "bft".into(),
                Mode::Cft => "cft".into(),
            },
            f: self.membership.f(),
            request_auth: Some(self.request_auth),
            client_signatures: None,
            requests_to_all: self.requests_to_all,
            max_frame_bytes: self.max_frame_bytes,
            view_manager: ViewManagerEntry { public_key: public_hex(&self.view_manager) },
            replicas: self
                .replicas
                .iter()
                .map(|(id, r)| ReplicaEntry {
                    id: id.0,
                    address: r.address.to_string(),
                    public_key: public_hex(&r.public_key),
                })
                .collect(),
        }
    }

    /// TOML text for [`Self::to_file`], with a header comment.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(&self.to_file()).expect("configuration serializes");
        format!("# Palisade cluster configuration. Public: share it with every replica and client.\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    fn sample(n: usize) -> String {
        let mut s = String::from("cluster_id = 5\nmode = \"bft\"\nf = 1\n");
        s += &format!(
            "[view_manager]\npublic_key = \"{}\"\n",
            public_hex(&generate(&mut rand_core::OsRng).verifying_key())
        );
        for i in 0..n {
            s += &format!(
                "[[replicas]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
                7000 + i,
                public_hex(&generate(&mut rand_core::OsRng).verifying_key())
            );
        }
        s
    }

    #[test]
    fn a_valid_configuration_round_trips() {
        let c = ClusterConfig::parse(&sample(4), "t").unwrap();
        assert_eq!(c.membership.n(), 4);
        assert_eq!(c.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(ClusterConfig::parse(&c.to_toml(), "t").unwrap(), c);
    }

    #[test]
    fn request_authentication_reads_old_files_as_they_were_meant_and_refuses_both_settings() {
        let with = |extra: &str| sample(4).replacen("f = 1\n", &format!("f = 1\n{extra}\n"), 1);
        let auth = |extra: &str| ClusterConfig::parse(&with(extra), "t").map(|c| c.request_auth);
        assert_eq!(auth(""), Ok(RequestAuth::Authenticators), "a file that says nothing gets the safe default");
        assert_eq!(auth("client_signatures = true"), Ok(RequestAuth::Signatures));
        assert_eq!(auth("client_signatures = false"), Ok(RequestAuth::TrustPrimary));
        assert_eq!(auth("request_auth = \"trust-primary\""), Ok(RequestAuth::TrustPrimary));
        let e =
            ClusterConfig::parse(&with("request_auth = \"signatures\"\nclient_signatures = false"), "t").unwrap_err();
        assert_eq!(e.field, "client_signatures");
        // An old file is written back in the new form, meaning the same.
        let old = ClusterConfig::parse(&with("client_signatures = false"), "t").unwrap();
        let text = old.to_toml();
        assert!(text.contains("request_auth = \"trust-primary\"") && !text.contains("client_signatures"), "{text}");
        assert_eq!(ClusterConfig::parse(&text, "t").unwrap(), old);
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = ClusterConfig::parse(&sample(3), "c.toml").unwrap_err();
        assert_eq!(e.field, "f");
        assert!(e.to_string().contains("3f+1"), "{e}");
        let bad_addr = sample(4).replacen("127.0.0.1:7002", "localhost", 1);
        let e = ClusterConfig::parse(&bad_addr, "c.toml").unwrap_err();
        assert_eq!(e.field, "replicas[2].address");
        let bad_mode = sample(4).replacen("\"bft\"", "\"pbft\"", 1);
        assert_eq!(ClusterConfig::parse(&bad_mode, "c.toml").unwrap_err().field, "mode");
        let unknown = format!("{}\nbogus = 1\n", sample(4));
        assert!(ClusterConfig::parse(&unknown, "c.toml").unwrap_err().problem.contains("unknown field"));
        let dup = sample(4).replacen("id = 3", "id = 2", 1);
        assert_eq!(ClusterConfig::parse(&dup, "c.toml").unwrap_err().field, "replicas[3].id");
    }
}
