//! Client request signatures and authenticators, verified in parallel
//! batches.
//!
//! When clients sign, a request's `auth` field is
//! `client_public_key[32] || ed25519_signature[64]` over
//! [`Request::signing_bytes`], and the request's client id must be the one
//! derived from that key ([`crate::keys::client_id`]). With authenticators
//! (`request_auth = "authenticators"`) it is followed by
//! `count:u8 (replica:u32 mac[16]){count}`: one MAC per replica the client
//! shares a channel with, HMAC-SHA256 under the channel's request key,
//! truncated to 16 bytes ([`request_mac`]). A backup accepts a request a
//! primary proposes on its own MAC, or else on the signature, which the
//! primary checked before proposing (docs/protocol.md, *Client
//! authenticity*).
//!
//! **One validity rule everywhere.** Single ed25519 verification is
//! cofactorless and batch verification is cofactored, so a crafted
//! signature can pass one and fail the other. Replicas must agree on
//! validity, so Palisade always uses the cofactored rule (dalek's batch
//! verifier, a batch of one when alone) and refuses small-order keys. A batch
//! that fails is split and re-verified to find the culprits.

use crate::keys::client_id;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use palisade_core::{ClientId, ReplicaId, Request, RequestId};
use rayon::prelude::*;
use std::collections::BTreeSet;

/// Bytes of a signed request's `auth` field without MACs.
pub const AUTH_BYTES: usize = 96;
/// Bytes of one MAC in an authenticator.
pub const MAC_BYTES: usize = 16;
const MAC_ENTRY_BYTES: usize = 4 + MAC_BYTES;
/// Bytes of the largest `auth` field: the key and signature, then a count
/// and up to 255 replica MACs.
pub const MAX_AUTH_BYTES: usize = AUTH_BYTES + 1 + u8::MAX as usize * MAC_ENTRY_BYTES;
const MAC_DOMAIN: &[u8] = b"palisade/request-mac/v1";

/// The MAC of `request` under a client-replica request key.
pub fn request_mac(key: &[u8; 32], request: &Request) -> [u8; MAC_BYTES] {
    mac_of(key, &request.signing_bytes())
}

/// The MAC of a request's signing bytes `signed`.
fn mac_of(key: &[u8; 32], signed: &[u8]) -> [u8; MAC_BYTES] {
    use hmac::Mac;
    let full = keyed_mac(key, signed).finalize().into_bytes();
    full[..MAC_BYTES].try_into().expect("16 bytes")
}

fn keyed_mac(key: &[u8; 32], signed: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(MAC_DOMAIN);
    m.update(signed);
    m
}

/// Signs `request` as the client holding `key` (setting its client id) and
/// appends one MAC for each `(replica, request key)`.
pub fn authenticate_request(key: &SigningKey, macs: &[(ReplicaId, [u8; 32])], request: &mut Request) {
    let count = macs.len().min(u8::MAX as usize);
    let mut auth = Vec::with_capacity(AUTH_BYTES + 1 + count * MAC_ENTRY_BYTES);
    // The signed bytes do not cover `auth`: built once, for the signature
    // and every MAC.
    let signed = signed_as(key, request, &mut auth);
    auth.push(count as u8);
    for (replica, k) in &macs[..count] {
        auth.extend_from_slice(&replica.0.to_le_bytes());
        auth.extend_from_slice(&mac_of(k, &signed));
    }
    request.auth = Bytes::from(auth);
}

/// The MAC `request`'s authenticator holds for `replica`, if any (and if
/// the authenticator is well formed).
pub fn mac_for(request: &Request, replica: ReplicaId) -> Option<[u8; MAC_BYTES]> {
    let rest = request.auth.get(AUTH_BYTES..)?;
    let (&count, entries) = rest.split_first()?;
    if entries.len() != count as usize * MAC_ENTRY_BYTES {
        return None;
    }
    entries.chunks_exact(MAC_ENTRY_BYTES).find_map(|e| {
        (u32::from_le_bytes(e[..4].try_into().expect("4 bytes")) == replica.0)
            .then(|| e[4..].try_into().expect("16 bytes"))
    })
}

/// Whether `request`'s MAC for `replica` checks under one of `keys` (in
/// constant time). The signed bytes are built once, and not at all when the
/// request holds no MAC for `replica`.
pub fn mac_checks_any(request: &Request, replica: ReplicaId, keys: &[[u8; 32]]) -> bool {
    use hmac::Mac;
    let Some(m) = mac_for(request, replica) else { return false };
    let signed = request.signing_bytes();
    keys.iter().any(|k| keyed_mac(k, &signed).verify_truncated_left(&m).is_ok())
}

/// Whether `request`'s MAC for `replica` checks under `key` (in constant
/// time).
pub fn mac_checks(request: &Request, replica: ReplicaId, key: &[u8; 32]) -> bool {
    mac_checks_any(request, replica, std::slice::from_ref(key))
}

/// Signs `request` as the client holding `key`, setting its client id too.
pub fn sign_request(key: &SigningKey, request: &mut Request) {
    let mut auth = Vec::with_capacity(AUTH_BYTES);
    signed_as(key, request, &mut auth);
    request.auth = Bytes::from(auth);
}

/// Sets `request`'s client id to `key`'s, appends the key and the
/// signature to `auth`, and returns the signed bytes.
fn signed_as(key: &SigningKey, request: &mut Request, auth: &mut Vec<u8>) -> Vec<u8> {
    let public = key.verifying_key().to_bytes();
    request.client = client_id(&public);
    let signed = request.signing_bytes();
    auth.extend_from_slice(&public);
    auth.extend_from_slice(&key.sign(&signed).to_bytes());
    signed
}

/// Why a request was refused before execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The operation is larger than allowed.
    Oversized,
    /// `auth` is not 96 bytes (plus a well-formed MAC section), or its key
    /// is not a valid, non-weak point.
    BadAuthFormat,
    /// The client id is not the one derived from the key.
    ClientIdMismatch,
    /// The request id is outside what the replica accepts for this client.
    OutOfRange,
    /// The same (client, request id) appeared earlier in this batch.
    Duplicate,
    /// The signature does not verify.
    BadSignature,
}

/// Limits for the verification stage.
#[derive(Clone, Copy, Debug)]
pub struct VerifyLimits {
    /// Largest operation, in bytes.
    pub max_operation_bytes: usize,
    /// Signatures per dalek batch (each batch is one rayon task).
    pub chunk: usize,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        VerifyLimits { max_operation_bytes: 1 << 20, chunk: 64 }
    }
}

struct Parsed {
    key: VerifyingKey,
    sig: Signature,
    message: Vec<u8>,
}

fn parse(request: &Request) -> Result<Parsed, Rejection> {
    if request.auth.len() < AUTH_BYTES {
        return Err(Rejection::BadAuthFormat);
    }
    if let Some((&count, entries)) = request.auth[AUTH_BYTES..].split_first() {
        if entries.len() != count as usize * MAC_ENTRY_BYTES {
            return Err(Rejection::BadAuthFormat);
        }
    }
    let public: [u8; 32] = request.auth[..32].try_into().expect("32 bytes");
    if client_id(&public) != request.client {
        return Err(Rejection::ClientIdMismatch);
    }
    let key = client_key(&public)?;
    let sig_bytes: [u8; 64] = request.auth[32..AUTH_BYTES].try_into().expect("64 bytes");
    Ok(Parsed { key, sig: Signature::from_bytes(&sig_bytes), message: request.signing_bytes() })
}

/// Client keys already decompressed and checked: a point decompression
/// costs about as much as a third of a signature check, and a client signs
/// many requests with one key. Bounded: emptied when full.
fn client_key(public: &[u8; 32]) -> Result<VerifyingKey, Rejection> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    const KEYS_MAX: usize = 1 << 16;
    static KEYS: OnceLock<Mutex<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(k) = keys.lock().unwrap_or_else(|e| e.into_inner()).get(public) {
        return Ok(*k);
    }
    let key = VerifyingKey::from_bytes(public).map_err(|_| Rejection::BadAuthFormat)?;
    if key.is_weak() {
        return Err(Rejection::BadAuthFormat);
    }
    let mut g = keys.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() >= KEYS_MAX {
        g.clear();
    }
    g.insert(*public, key);
    Ok(key)
}

fn batch_ok(items: &[&Parsed]) -> bool {
    let messages: Vec<&[u8]> = items.iter().map(|p| p.message.as_slice()).collect();
    let sigs: Vec<Signature> = items.iter().map(|p| p.sig).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|p| p.key).collect();
    ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok()
}

/// Verifies one request's client signature with the cluster-wide rule.
pub fn verify_request(request: &Request) -> Result<(), Rejection> {
    let p = parse(request)?;
    if batch_ok(&[&p]) {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

/// The view manager's signatures and added members' keys, judged with the
/// same rule as client signatures: execution must reach the same verdict on
/// every replica.
pub struct AdminCrypto;

impl palisade_core::reconfig::AdminVerify for AdminCrypto {
    fn signature_checks(&self, key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        let (Ok(key), Ok(sig)) = (client_key(key), <[u8; 64]>::try_from(signature)) else {
            return false;
        };
        ed25519_dalek::verify_batch(&[message], &[Signature::from_bytes(&sig)], &[key]).is_ok()
    }

    fn key_is_valid(&self, key: &[u8; 32]) -> bool {
        client_key(key).is_ok()
    }
}

/// Signs a reconfiguration request as the view manager.
pub fn sign_admin(key: &SigningKey, body: palisade_core::reconfig::AdminBody) -> palisade_core::reconfig::AdminRequest {
    let signature = Bytes::copy_from_slice(&key.sign(&body.signing_bytes()).to_bytes());
    palisade_core::reconfig::AdminRequest { body, signature }
}

/// Marks the bad members of `items` by bisection; `bad[i]` answers for `items[i]`.
fn find_bad(items: &[&Parsed], bad: &mut [bool]) {
    if batch_ok(items) {
        return;
    }
    if items.len() == 1 {
        bad[0] = true;
        return;
    }
    let mid = items.len() / 2;
    let (l, r) = bad.split_at_mut(mid);
    find_bad(&items[..mid], l);
    find_bad(&items[mid..], r);
}

/// The verification stage's work on one inbox drain: cheap checks first
/// (size, format, client id, range, duplicates), then signatures in
/// chunks of `limits.chunk`, one rayon task per chunk, on `pool`.
/// Results come back in input order.
pub fn verify_batch(
    requests: Vec<Request>,
    limits: VerifyLimits,
    in_range: impl Fn(ClientId, RequestId) -> bool + Sync,
    pool: &rayon::ThreadPool,
) -> Vec<Result<Request, (Request, Rejection)>> {
    let mut seen = BTreeSet::new();
    let mut parsed: Vec<Result<Parsed, Rejection>> = Vec::with_capacity(requests.len());
    for r in &requests {
        let verdict = if r.operation.len() > limits.max_operation_bytes {
            Err(Rejection::Oversized)
        } else if !in_range(r.client, r.id) {
            Err(Rejection::OutOfRange)
        } else if !seen.insert((r.client, r.id)) {
            Err(Rejection::Duplicate)
        } else {
            parse(r)
        };
        parsed.push(verdict);
    }
    let candidates: Vec<(usize, &Parsed)> =
        parsed.iter().enumerate().filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p))).collect();
    let chunk = limits.chunk.max(1);
    let bad_indices: Vec<usize> = pool.install(|| {
        candidates
            .par_chunks(chunk)
            .flat_map_iter(|c| {
                let items: Vec<&Parsed> = c.iter().map(|(_, p)| *p).collect();
                let mut bad = vec![false; items.len()];
                find_bad(&items, &mut bad);
                c.iter().zip(bad).filter(|(_, b)| *b).map(|((i, _), _)| *i).collect::<Vec<_>>()
            })
            .collect()
    });
    let bad: BTreeSet<usize> = bad_indices.into_iter().collect();
    requests
        .into_iter()
        .zip(parsed)
        .enumerate()
        .map(|(i, (r, p))| match p {
            Err(why) => Err((r, why)),
            Ok(_) if bad.contains(&i) => Err((r, Rejection::BadSignature)),
            Ok(_) => Ok(r),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &SigningKey, id: u64) -> Request {
        let mut r = Request {
            client: ClientId(0),
            id: RequestId(id),
            read_only: false,
            operation: Bytes::from(vec![id as u8; 10]),
            auth: Bytes::new(),
        };
        sign_request(key, &mut r);
        r
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    #[test]
    fn an_admin_request_checks_under_the_view_managers_key_only_and_weak_keys_are_invalid() {
        use palisade_core::reconfig::{AdminBody, AdminOp, AdminVerify};
        let vm = crate::keys::generate(&mut rand_core::OsRng);
        let other = crate::keys::generate(&mut rand_core::OsRng);
        let body = AdminBody { cluster: 1, epoch: 0, nonce: 1, ops: vec![AdminOp::Remove { id: ReplicaId(0) }] };
        let req = sign_admin(&vm, body.clone());
        let vm_pub = vm.verifying_key().to_bytes();
        assert!(AdminCrypto.signature_checks(&vm_pub, &body.signing_bytes(), &req.signature));
        assert!(!AdminCrypto.signature_checks(
            &other.verifying_key().to_bytes(),
            &body.signing_bytes(),
            &req.signature
        ));
        let mut changed = body.clone();
        changed.nonce = 2;
        assert!(!AdminCrypto.signature_checks(&vm_pub, &changed.signing_bytes(), &req.signature));
        assert!(!AdminCrypto.signature_checks(&vm_pub, &body.signing_bytes(), &req.signature[..63]));
        assert!(AdminCrypto.key_is_valid(&vm_pub));
        // The identity point is a valid encoding but a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!AdminCrypto.key_is_valid(&identity));
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let key = crate::keys::generate(&mut rand_core::OsRng);
        let r = signed(&key, 1);
        assert_eq!(verify_request(&r), Ok(()));
        let mut op = r.clone();
        op.operation = Bytes::from_static(b"other");
        assert_eq!(verify_request(&op), Err(Rejection::BadSignature));
        let mut id = r.clone();
        id.client = ClientId(id.client.0 ^ 1);
        assert_eq!(verify_request(&id), Err(Rejection::ClientIdMismatch));
        let mut short = r.clone();
        short.auth = r.auth.slice(..95);
        assert_eq!(verify_request(&short), Err(Rejection::BadAuthFormat));
    }

    #[test]
    fn an_authenticator_holds_one_mac_per_replica_each_good_only_under_its_key() {
        let key = crate::keys::generate(&mut rand_core::OsRng);
        let (k0, k1) = ([1u8; 32], [2u8; 32]);
        let mut r = Request {
            client: ClientId(0),
            id: RequestId(9),
            read_only: false,
            operation: Bytes::from_static(b"add 1"),
            auth: Bytes::new(),
        };
        authenticate_request(&key, &[(ReplicaId(0), k0), (ReplicaId(1), k1)], &mut r);
        assert_eq!(r.auth.len(), AUTH_BYTES + 1 + 2 * (4 + MAC_BYTES));
        assert_eq!(verify_request(&r), Ok(()), "the signature still checks");
        assert!(mac_checks(&r, ReplicaId(0), &k0) && mac_checks(&r, ReplicaId(1), &k1));
        assert!(!mac_checks(&r, ReplicaId(0), &k1), "another replica's key");
        assert!(!mac_checks(&r, ReplicaId(2), &k0), "no MAC for replica 2");
        let mut altered = r.clone();
        altered.operation = Bytes::from_static(b"add 9");
        assert!(!mac_checks(&altered, ReplicaId(0), &k0));
        let mut cut = r.clone();
        cut.auth = r.auth.slice(..r.auth.len() - 1);
        assert_eq!(verify_request(&cut), Err(Rejection::BadAuthFormat));
        assert_eq!(mac_for(&cut, ReplicaId(0)), None);
    }

    #[test]
    fn a_client_cannot_sign_for_another_client() {
        let alice = crate::keys::generate(&mut rand_core::OsRng);
        let mallory = crate::keys::generate(&mut rand_core::OsRng);
        let mut r = signed(&alice, 1);
        // Mallory signs with her key but claims Alice's id and key.
        let sig = mallory.sign(&r.signing_bytes());
        let mut auth = r.auth[..32].to_vec();
        auth.extend_from_slice(&sig.to_bytes());
        r.auth = Bytes::from(auth);
        assert_eq!(verify_request(&r), Err(Rejection::BadSignature));
    }

    #[test]
    fn batch_verification_finds_exactly_the_bad_requests_in_order() {
        let key = crate::keys::generate(&mut rand_core::OsRng);
        let mut reqs: Vec<Request> = (1..=200).map(|i| signed(&key, i)).collect();
        for i in [3usize, 64, 65, 199] {
            let mut op = reqs[i].operation.to_vec();
            op[0] ^= 0xff;
            reqs[i].operation = Bytes::from(op);
        }
        reqs[10].operation = Bytes::from(vec![0u8; 2 << 20]);
        reqs.push(reqs[0].clone());
        let limits = VerifyLimits { chunk: 16, ..VerifyLimits::default() };
        for threads in [1, 2] {
            let out = verify_batch(reqs.clone(), limits, |_, id| id.0 != 150, &pool(threads));
            assert_eq!(out.len(), reqs.len());
            let verdicts: Vec<(usize, Rejection)> =
                out.iter().enumerate().filter_map(|(i, r)| r.as_ref().err().map(|(_, why)| (i, *why))).collect();
            assert_eq!(
                verdicts,
                vec![
                    (3, Rejection::BadSignature),
                    (10, Rejection::Oversized),
                    (64, Rejection::BadSignature),
                    (65, Rejection::BadSignature),
                    (149, Rejection::OutOfRange),
                    (199, Rejection::BadSignature),
                    (200, Rejection::Duplicate),
                ]
            );
            for (i, r) in out.iter().enumerate() {
                if let Ok(r) = r {
                    assert_eq!(r, &reqs[i]);
                }
            }
        }
    }
}
