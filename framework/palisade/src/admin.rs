//! `palisade admin` and `palisade keygen --new-replica`: changing the
//! membership at runtime with the view manager's key
//! (docs/reconfiguration.md).

use crate::commands::{fail, EXIT_UNAVAILABLE, EXIT_USAGE};
use palisade_client::{Client, ClientOptions};
use palisade_core::reconfig::{AdminBody, AdminOp, AdminOutcome, Configuration, Rejection};
use palisade_core::ReplicaId;
use palisade_wire::address::HostPort;
use palisade_wire::chain::Chain;
use palisade_wire::envelope::{MemberRole, StatusReport};
use palisade_wire::keys;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit code when the cluster refused a reconfiguration.
pub const EXIT_REJECTED: u8 = 1;

/// `palisade keygen --new-replica`: a key for a replica that is not a
/// member yet, and the line that admits it.
pub fn new_replica(out: &Path, id: u32, address: &str, config: &Path) -> ExitCode {
    let (key_file, public) = match write_new_replica(out, id, address) {
        Ok(x) => x,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    println!("wrote {} with replica-{id}.pub and joining-{id}.toml", key_file.display());
    println!("start it:  palisade replica --config {} --id {id} --service SERVICE --join", config.display());
    println!(
        "admit it:  palisade admin add --id {id} --address {address} --public-key {public} --config {}",
        config.display()
    );
    ExitCode::SUCCESS
}

/// Writes a new replica's secret key (`replica-<id>.key`, never
/// overwritten), its public key (`replica-<id>.pub`, hex) and where it
/// listens (`joining-<id>.toml`); returns the key file and the public key.
pub fn write_new_replica(out: &Path, id: u32, address: &str) -> Result<(PathBuf, String), String> {
    let me = ReplicaId(id);
    HostPort::parse(address).map_err(|e| format!("--address {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let key_file = crate::keygen::replica_key_file(out, me);
    let key = keys::generate(&mut rand_core::OsRng);
    keys::write_secret(&key_file, &key).map_err(|e| e.to_string())?;
    let joining = crate::keygen::joining_file(out, me);
    std::fs::write(&joining, format!("id = {id}\naddress = {address:?}\n"))
        .map_err(|e| format!("{}: {e}", joining.display()))?;
    let public = keys::public_hex(&key.verifying_key());
    let public_file = out.join(format!("replica-{id}.pub"));
    std::fs::write(&public_file, format!("{public}\n")).map_err(|e| format!("{}: {e}", public_file.display()))?;
    Ok((key_file, public))
}

/// What `palisade admin` asks of the cluster.
#[derive(Clone, Debug)]
pub enum AdminCommand {
    /// Admit a replica.
    Add {
        /// Its id.
        id: u32,
        /// Where it listens.
        address: String,
        /// Its public key, hex.
        public_key: String,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u32,
    },
    /// Set the faults tolerated.
    SetF {
        /// The new f.
        f: usize,
    },
    /// Show every replica's state.
    Status,
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| fail(EXIT_USAGE, e))
}

/// `palisade admin ...`.
pub fn admin(config: &Path, cmd: AdminCommand, timeout_ms: u64) -> ExitCode {
    let op = match cmd {
        AdminCommand::Status => return status(config, timeout_ms),
        AdminCommand::Add { id, address, public_key } => {
            let key = match keys::parse_public(&public_key, "--public-key") {
                Ok(k) => k,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            if let Err(e) = HostPort::parse(&address) {
                return fail(EXIT_USAGE, format!("--address {e}"));
            }
            AdminOp::Add { id: ReplicaId(id), address, public_key: key.to_bytes() }
        }
        AdminCommand::Remove { id } => AdminOp::Remove { id: ReplicaId(id) },
        AdminCommand::SetF { f } => AdminOp::SetF { f },
    };
    match reconfigure(config, vec![op], timeout_ms) {
        Ok(AdminOutcome::Accepted { next, boundary }) => {
            println!("accepted: epoch {} starts after sequence number {}", next.epoch, boundary.0);
            print_configuration(&next);
            ExitCode::SUCCESS
        }
        Ok(AdminOutcome::Rejected(why)) => fail(EXIT_REJECTED, format!("rejected: {why}")),
        Err(Failure::Usage(e)) => fail(EXIT_USAGE, e),
        Err(Failure::Unavailable(e)) => fail(EXIT_UNAVAILABLE, e),
    }
}

/// Why a reconfiguration got no outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The configuration directory or the view manager's key is unusable.
    Usage(String),
    /// The cluster did not answer.
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(e) | Failure::Unavailable(e) => f.write_str(e),
        }
    }
}

/// Asks the cluster configured in `config` to carry out `ops`, signed with
/// `config/view-manager.key`, in the newest epoch known (the links saved
/// beside the configuration, and any the replicas tell), and waits for
/// the outcome. A request the cluster finds written for an older epoch, or
/// with a nonce not above the last one used, is written again (at most
/// twice) for the epoch the client has learned by then, above that nonce.
pub fn reconfigure(config: &Path, ops: Vec<AdminOp>, timeout_ms: u64) -> Result<AdminOutcome, Failure> {
    let genesis = palisade_wire::ClusterConfig::load(config).map_err(|e| Failure::Usage(e.to_string()))?;
    let chain = Chain::load(config, genesis.genesis()).map_err(|e| Failure::Usage(e.to_string()))?;
    let vm_file = crate::keygen::view_manager_key_file(config);
    let vm = keys::read_secret(&vm_file)
        .map_err(|e| Failure::Usage(format!("{e} (admin commands are signed with the view manager's key)")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let cluster_id = genesis.cluster_id;
    let opts = ClientOptions { timeout_ms, keep_chain_in: Some(config.to_path_buf()), ..ClientOptions::default() };
    rt.block_on(async {
        let client = Client::connect_at(genesis, chain, vm.clone(), opts);
        settle(&client, timeout_ms).await;
        let (mut tries, mut above) = (0, 0);
        loop {
            tries += 1;
            let epoch = client.epoch();
            // Above the clock, and above the last nonce the cluster saw (a
            // view manager whose clock is behind catches up on the retry).
            let body = AdminBody { cluster: cluster_id, epoch, nonce: nonce().max(above + 1), ops: ops.clone() };
            let request = palisade_wire::verify::sign_admin(&vm, body);
            let result =
                client.invoke_ordered(request.encode()).await.map_err(|e| Failure::Unavailable(e.to_string()))?;
            match AdminOutcome::decode(&result) {
                Some(AdminOutcome::Rejected(Rejection::WrongEpoch { current })) if tries < 3 && current > epoch => {
                    settle(&client, timeout_ms).await;
                }
                Some(AdminOutcome::Rejected(Rejection::NonceReused { last })) if tries < 3 => above = last,
                Some(outcome) => return Ok(outcome),
                None => return Err(Failure::Unavailable("the answer is not a reconfiguration outcome".into())),
            }
        }
    })
}

/// Gives a new client a moment to connect and learn of newer epochs.
async fn settle(client: &Client, timeout_ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(2_000));
    let mut last = (client.epoch(), client.connected());
    let mut quiet = 0;
    while Instant::now() < deadline && quiet < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (client.epoch(), client.connected());
        let enough = now.1 >= client.membership().quorum();
        quiet = if now == last && enough { quiet + 1 } else { 0 };
        last = now;
    }
}

/// Nonces must rise: microseconds since the epoch do, for one view manager.
fn nonce() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

fn print_configuration(c: &Configuration) {
    println!("epoch {}: {} members, f = {} ({:?})", c.epoch, c.members.len(), c.f, c.mode);
    for m in &c.members {
        println!("  replica {}: {}", m.id, m.address);
    }
}

/// `palisade admin status`: one line per replica of the newest epoch known
/// (and any other that answers), and whether enough are healthy.
fn status(config: &Path, timeout_ms: u64) -> ExitCode {
    let (genesis, chain) = match palisade_wire::ClusterConfig::load(config)
        .map_err(|e| e.to_string())
        .and_then(|g| Chain::load(config, g.genesis()).map(|c| (g, c)).map_err(|e| e.to_string()))
    {
        Ok(x) => x,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let key = match crate::commands::client_key(config) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = ClientOptions { timeout_ms, keep_chain_in: Some(config.to_path_buf()), ..ClientOptions::default() };
    let (reports, membership, epoch) = rt.block_on(async {
        let client = Client::connect_at(genesis, chain, key, opts);
        settle(&client, timeout_ms).await;
        let reports = client.status(Duration::from_millis(timeout_ms.min(3_000))).await;
        (reports, client.membership(), client.epoch())
    });
    println!("epoch {epoch}: {} members, f = {}", membership.n(), membership.f());
    println!(
        "{:>8} {:>9} {:>6} {:>8} {:>8} {:>10} {:>10} {:>6} {:>8}  {:<28} role",
        "replica", "reachable", "epoch", "view", "primary", "delivered", "stable", "peers", "clients", "fullest queue"
    );
    let mut healthy = 0;
    for id in membership.members() {
        match reports.iter().find(|r| r.replica == *id) {
            Some(r) => {
                healthy += usize::from(is_healthy(r, epoch));
                print_report(r);
            }
            None => println!("{:>8} {:>9}", id.0, "no"),
        }
    }
    for r in reports.iter().filter(|r| !membership.contains(r.replica)) {
        print_report(r);
    }
    if healthy < membership.quorum() {
        return fail(
            EXIT_UNAVAILABLE,
            format!("only {healthy} healthy members, fewer than a quorum of {}", membership.quorum()),
        );
    }
    ExitCode::SUCCESS
}

fn is_healthy(r: &StatusReport, epoch: u64) -> bool {
    r.role == MemberRole::Member && r.epoch == epoch && r.normal
}

fn print_report(r: &StatusReport) {
    let role = match r.role {
        MemberRole::Member => "member",
        MemberRole::Joining => "joining",
        MemberRole::Removed => "removed",
    };
    // The queue nearest its bound says where a slow replica is stuck.
    let fullest = r
        .queues
        .iter()
        .filter(|q| q.depth > 0)
        .max_by(|a, b| {
            // Reports come from replicas, which may be faulty: no overflow.
            (a.depth as u128 * b.capacity.max(1) as u128).cmp(&(b.depth as u128 * a.capacity.max(1) as u128))
        })
        .map_or("-".to_string(), |q| format!("{} {}/{}", q.name, q.depth, q.capacity));
    println!(
        "{:>8} {:>9} {:>6} {:>8} {:>8} {:>10} {:>10} {:>6} {:>8}  {:<28} {role}{}",
        r.replica.0,
        "yes",
        r.epoch,
        r.view.0,
        r.primary.0,
        r.delivered,
        r.stable,
        r.peers_connected,
        r.clients_connected,
        fullest,
        if r.normal { "" } else { " (changing view)" }
    );
}
