//! Modelled cryptography: a keyed hash stands in for signatures and MACs.
//!
//! It is not secure against someone who reads the simulator's memory, but it
//! models who can sign what exactly: each replica's [`SimCrypto`] holds only
//! its own secret, and Byzantine strategies only ever get their replica's
//! handle, so they cannot produce another replica's or a client's signature,
//! nor a client's MAC for another replica.
//!
//! A client request's authenticator is its signature followed by one MAC
//! for each replica, under a key the client shares with that replica
//! (`auth = signature[32] mac_0[32] .. mac_{n-1}[32]`): a backup accepts a
//! proposed request on its own MAC, and checks the signature only when the
//! MAC fails. Every signature check is counted, so that a run shows what
//! the authenticators save.

use bytes::Bytes;
use palisade_core::message::Signature;
use palisade_core::reconfig::{AdminBody, AdminRequest, AdminVerify};
use palisade_core::{ClientId, Crypto, Digest, ReplicaId, Request};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const TAG: usize = 32;

/// Every secret of one simulated cluster.
pub struct Keys {
    replicas: Vec<[u8; 32]>,
    /// The view manager's secret; its client id is that of [`Keys::view_manager_public`].
    view_manager: [u8; 32],
    clients: BTreeMap<ClientId, [u8; 32]>,
    /// Every request a client authenticated: (client, id, operation digest).
    issued: Mutex<BTreeSet<(ClientId, u64, Digest)>>,
    /// Signature checks made by replicas.
    signature_checks: AtomicU64,
}

/// How a (possibly faulty) client authenticates a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authenticity {
    /// A valid signature and a valid MAC for every replica.
    Honest,
    /// Valid MACs for the replicas whose bit is set in the mask, and a
    /// signature that does not check: Aardvark's split attack.
    SplitMacs(u64),
    /// Valid MACs for every replica, and a signature that does not check.
    BadSignature,
}

impl Keys {
    /// Secrets for `n` replicas (members and spares that may join), the
    /// given clients and the view manager, derived from `seed`.
    pub fn new(seed: u64, n: usize, clients: &[ClientId]) -> Arc<Keys> {
        let key = |tag: &[u8], i: u64| Digest::of_parts(&[b"sim-key", tag, &seed.to_le_bytes(), &i.to_le_bytes()]).0;
        let view_manager = key(b"view-manager", 0);
        let mut client_keys: BTreeMap<ClientId, [u8; 32]> = clients.iter().map(|c| (*c, key(b"client", c.0))).collect();
        // The view manager sends its requests as a client too.
        client_keys.insert(ClientId::of_key(&Self::public_of(&view_manager)), key(b"vm-client", 0));
        Arc::new(Keys {
            replicas: (0..n as u64).map(|i| key(b"replica", i)).collect(),
            view_manager,
            clients: client_keys,
            issued: Mutex::new(BTreeSet::new()),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// The key client `c` shares with replica `r` (in the runtime, derived
    /// from their authenticated channel).
    fn mac_key(&self, c: &[u8; 32], r: usize) -> Digest {
        Digest::of_parts(&[b"sim-mac", c, &(r as u64).to_le_bytes()])
    }

    fn signature(k: &[u8; 32], req: &Request) -> [u8; 32] {
        Digest::of_parts(&[k, &req.signing_bytes()]).0
    }

    fn mac(&self, k: &[u8; 32], r: usize, req: &Request) -> [u8; 32] {
        Digest::of_parts(&[b"mac", &self.mac_key(k, r).0, &req.signing_bytes()]).0
    }

    /// Authenticates a request as its client (what a simulated client does).
    pub fn sign_request(&self, req: &mut Request) {
        self.authenticate(req, Authenticity::Honest);
    }

    /// Authenticates a request as its client would, honestly or not, and
    /// records that the client sent it.
    pub fn authenticate(&self, req: &mut Request, how: Authenticity) {
        let k = self.clients.get(&req.client).expect("known client");
        let mut auth = Vec::with_capacity(TAG * (1 + self.replicas.len()));
        let sig = Self::signature(k, req);
        match how {
            Authenticity::Honest => auth.extend_from_slice(&sig),
            _ => auth.extend_from_slice(&[0xBA; TAG]),
        }
        for r in 0..self.replicas.len() {
            let valid = match how {
                Authenticity::Honest | Authenticity::BadSignature => true,
                Authenticity::SplitMacs(mask) => mask >> r & 1 == 1,
            };
            if valid {
                auth.extend_from_slice(&self.mac(k, r, req));
            } else {
                auth.extend_from_slice(&[0xAD; TAG]);
            }
        }
        req.auth = Bytes::from(auth);
        self.issued.lock().insert((req.client, req.id.0, Digest::of(&req.operation)));
    }

    fn public_of(secret: &[u8; 32]) -> [u8; 32] {
        Digest::of_parts(&[b"sim-public", secret]).0
    }

    /// Replica `r`'s public key, as a configuration lists it.
    pub fn replica_public(&self, r: usize) -> [u8; 32] {
        Self::public_of(&self.replicas[r])
    }

    /// The view manager's public key.
    pub fn view_manager_public(&self) -> [u8; 32] {
        Self::public_of(&self.view_manager)
    }

    /// Signs a reconfiguration request as the view manager.
    pub fn sign_admin(&self, body: AdminBody) -> AdminRequest {
        let signature = Bytes::copy_from_slice(&Digest::of_parts(&[&self.view_manager, &body.signing_bytes()]).0);
        AdminRequest { body, signature }
    }

    /// Whether client `client` sent request `id` with this operation.
    pub fn issued(&self, client: ClientId, id: u64, operation: &[u8]) -> bool {
        self.issued.lock().contains(&(client, id, Digest::of(operation)))
    }

    /// Signature checks the replicas have made so far.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }
}

/// Checks the view manager's signatures as every replica would: the
/// verdict is the same everywhere. A key of all zeroes stands for one that
/// is not a valid point.
pub struct SimAdmin(pub Arc<Keys>);

impl AdminVerify for SimAdmin {
    fn signature_checks(&self, key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        *key == self.0.view_manager_public()
            && signature == Digest::of_parts(&[&self.0.view_manager, message]).0.as_slice()
    }

    fn key_is_valid(&self, key: &[u8; 32]) -> bool {
        *key != [0; 32]
    }
}

/// One replica's view of the keys, in one epoch: it signs only as itself.
#[derive(Clone)]
pub struct SimCrypto {
    me: ReplicaId,
    keys: Arc<Keys>,
    epoch: u64,
}

impl SimCrypto {
    /// The handle of replica `me`.
    pub fn new(me: ReplicaId, keys: Arc<Keys>) -> SimCrypto {
        SimCrypto { me, keys, epoch: 0 }
    }

    /// The same replica's handle in `epoch`.
    pub fn in_epoch(&self, epoch: u64) -> SimCrypto {
        SimCrypto { epoch, ..self.clone() }
    }

    fn tag(&self, who: ReplicaId, payload: &[u8]) -> Option<[u8; 32]> {
        let k = self.keys.replicas.get(who.0 as usize)?;
        Some(Digest::of_parts(&[k, payload]).0)
    }
}

impl Crypto for SimCrypto {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(Bytes::copy_from_slice(&self.tag(self.me, payload).expect("own key")))
    }

    fn verify(&self, signer: ReplicaId, payload: &[u8], signature: &Signature) -> bool {
        self.tag(signer, payload).is_some_and(|t| signature.0.as_ref() == t)
    }

    fn verify_request(&self, request: &Request) -> bool {
        self.keys.signature_checks.fetch_add(1, Ordering::Relaxed);
        match self.keys.clients.get(&request.client) {
            Some(k) => request.auth.get(..TAG).is_some_and(|s| s == Keys::signature(k, request)),
            None => false,
        }
    }

    fn accept_proposed(&self, request: &Request) -> bool {
        let me = self.me.0 as usize;
        let own = request.auth.get(TAG * (1 + me)..TAG * (2 + me));
        let mac_ok = match (self.keys.clients.get(&request.client), own) {
            (Some(k), Some(mac)) => mac == self.keys.mac(k, me, request),
            _ => false,
        };
        mac_ok || self.verify_request(request)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}
