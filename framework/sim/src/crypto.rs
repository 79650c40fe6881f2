//! Modelled cryptography: a keyed hash stands in for signatures.
//!
//! It is not secure against someone who reads the simulator's memory, but it
//! models who can sign what exactly: each replica's [`SimCrypto`] holds only
//! its own secret, and Byzantine strategies only ever get their replica's
//! handle, so they cannot produce another replica's or a client's signature.

use bytes::Bytes;
use palisade_core::message::Signature;
use palisade_core::{ClientId, Crypto, Digest, ReplicaId, Request};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every secret of one simulated cluster.
pub struct Keys {
    replicas: Vec<[u8; 32]>,
    clients: BTreeMap<ClientId, [u8; 32]>,
}

impl Keys {
    /// Secrets for `n` replicas and the given clients, derived from `seed`.
    pub fn new(seed: u64, n: usize, clients: &[ClientId]) -> Arc<Keys> {
        let key = |tag: &[u8], i: u64| Digest::of_parts(&[b"sim-key", tag, &seed.to_le_bytes(), &i.to_le_bytes()]).0;
        Arc::new(Keys {
            replicas: (0..n as u64).map(|i| key(b"replica", i)).collect(),
            clients: clients.iter().map(|c| (*c, key(b"client", c.0))).collect(),
        })
    }

    /// Signs a request as its client (what a simulated client does).
    pub fn sign_request(&self, req: &mut Request) {
        let k = self.clients.get(&req.client).expect("known client");
        req.auth = Bytes::copy_from_slice(&Digest::of_parts(&[k, &req.signing_bytes()]).0);
    }
}

/// One replica's view of the keys: it signs only as itself.
#[derive(Clone)]
pub struct SimCrypto {
    me: ReplicaId,
    keys: Arc<Keys>,
}

impl SimCrypto {
    /// The handle of replica `me`.
    pub fn new(me: ReplicaId, keys: Arc<Keys>) -> SimCrypto {
        SimCrypto { me, keys }
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
        match self.keys.clients.get(&request.client) {
            Some(k) => request.auth.as_ref() == Digest::of_parts(&[k, &request.signing_bytes()]).0,
            None => false,
        }
    }
}
