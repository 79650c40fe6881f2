//! Client request signatures and authenticators, verified in parallel
//! batches.
//!
//! When clients sign, a request's `auth` field is
//! `client_public_key[32] || ed25519_signature[64] || depth:u8 || sides:u8
//! || sibling[32]{depth}`. One signature covers a *group* of requests a
//! client issued together: the signature is over the root of a hash tree
//! whose leaves are the requests' [`Request::signing_bytes`], and each
//! request carries the sibling hashes from its leaf to that root (bit `j` of
//! `sides` set when sibling `j` is the left one). A client with many
//! requests in flight thus signs once per group instead of once per
//! request, and a replica checks each distinct signature once. A lone
//! request is a group of one: depth 0, and the root is its leaf. The
//! request's client id must be the one derived from the key
//! ([`crate::keys::client_id`]).
//!
//! With authenticators (`request_auth = "authenticators"`) the proof is
//! followed by `count:u8 (replica:u32 mac[16]){count}`: one MAC per replica
//! the client shares a channel with, HMAC-SHA256 under the channel's
//! request key over the request's leaf hash (so the request is hashed once
//! however many replicas it is MACed for), truncated to 16 bytes
//! ([`request_mac`]). A backup accepts a request a primary proposes on its
//! own MAC, or else on the signature, which the primary checked before
//! proposing (docs/protocol.md, *Client authenticity*).
//!
//! **One validity rule everywhere.** Replicas must agree on every
//! signature's validity, whichever other signatures share its batch. Plain
//! ed25519 verification does not promise that: the usual single check is
//! cofactorless, and a batch check without the cofactor (dalek's) weighs
//! each signature by a random scalar, so a crafted signature whose R has a
//! small-order component passes or fails depending on its batch mates.
//! Palisade therefore checks client and replica signatures with the
//! cofactored equation of ZIP 215 (`ed25519-zebra`), alone and in batches
//! alike, and refuses small-order keys. A batch that fails is split and
//! re-verified to find the culprits. Verdicts are remembered per exact
//! (key, signature, root), never per root alone: a faulty client that
//! sends one request of a group with a bad signature gets it refused by
//! every replica, whether or not that replica saw the group's good
//! signature first.

use crate::keys::client_id;
use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use palisade_core::{ClientId, ReplicaId, Request, RequestId};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, OnceLock};

/// Bytes of the client's key and signature at the start of a signed
/// request's `auth` field.
pub const AUTH_BYTES: usize = 96;
/// Bytes of the proof header (depth and sides) after the signature.
const PROOF_HEADER: usize = 2;
/// Deepest proof a request may carry: one signature covers at most
/// [`MAX_GROUP`] requests.
pub const MAX_GROUP_DEPTH: usize = 8;
/// Most requests one client signature may cover.
pub const MAX_GROUP: usize = 1 << MAX_GROUP_DEPTH;
const HASH_BYTES: usize = 32;
/// Bytes of one MAC in an authenticator.
pub const MAC_BYTES: usize = 16;
const MAC_ENTRY_BYTES: usize = 4 + MAC_BYTES;
/// Bytes of the largest `auth` field: the key and signature, the deepest
/// proof, then a count and up to 255 replica MACs.
pub const MAX_AUTH_BYTES: usize =
    AUTH_BYTES + PROOF_HEADER + MAX_GROUP_DEPTH * HASH_BYTES + 1 + u8::MAX as usize * MAC_ENTRY_BYTES;
const MAC_DOMAIN: &[u8] = b"palisade/request-mac/v1";
const GROUP_DOMAIN: &[u8] = b"palisade/request-group/v1";
const SIGNED_BYTES: usize = GROUP_DOMAIN.len() + HASH_BYTES;
/// Distinct verified signatures remembered (each is a key, a signature and
/// a root: 128 bytes).
const MEMO_MAX: usize = 1 << 15;

/// The MAC of `request` under a client-replica request key.
pub fn request_mac(key: &[u8; 32], request: &Request) -> [u8; MAC_BYTES] {
    mac_of(key, &request_leaf(request))
}

/// The MAC of a request's leaf hash: the request is hashed once, for its
/// group's tree, however many replicas it carries a MAC for.
fn mac_of(key: &[u8; 32], leaf: &[u8; HASH_BYTES]) -> [u8; MAC_BYTES] {
    use hmac::Mac;
    let full = keyed_mac(key, leaf).finalize().into_bytes();
    full[..MAC_BYTES].try_into().expect("16 bytes")
}

fn keyed_mac(key: &[u8; 32], leaf: &[u8; HASH_BYTES]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(MAC_DOMAIN);
    m.update(leaf);
    m
}

/// A leaf of a group's hash tree: SHA-256 of 0x00 and one request's
/// signing bytes (hashed where they lie, not copied into one buffer
/// first). The prefix byte keeps leaves and inner nodes apart, so that no
/// inner node can pass as a request.
fn request_leaf(request: &Request) -> [u8; HASH_BYTES] {
    let mut h = Sha256::new();
    h.update([0u8]);
    request.signing_parts(|part| h.update(part));
    h.finalize().into()
}

fn node(left: &[u8; HASH_BYTES], right: &[u8; HASH_BYTES]) -> [u8; HASH_BYTES] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The bytes the client signs for a group with hash-tree `root`.
fn group_message(root: &[u8; HASH_BYTES]) -> [u8; SIGNED_BYTES] {
    let mut m = [0u8; SIGNED_BYTES];
    m[..GROUP_DOMAIN.len()].copy_from_slice(GROUP_DOMAIN);
    m[GROUP_DOMAIN.len()..].copy_from_slice(root);
    m
}

/// Signs `requests` as the client holding `key`, with one signature for
/// every [`MAX_GROUP`] of them, setting their client id.
pub fn sign_group(key: &SigningKey, requests: &mut [Request]) {
    for group in requests.chunks_mut(MAX_GROUP) {
        sign_chunk(key, &[], group);
    }
}

/// [`sign_group`], then one MAC per `(replica, request key)` on each
/// request.
pub fn authenticate_group(key: &SigningKey, macs: &[(ReplicaId, [u8; 32])], requests: &mut [Request]) {
    let macs = &macs[..macs.len().min(u8::MAX as usize)];
    for group in requests.chunks_mut(MAX_GROUP) {
        sign_chunk(key, macs, group);
    }
    if macs.is_empty() {
        // An empty MAC section still says "authenticators".
        for r in requests.iter_mut() {
            let mut auth = r.auth.to_vec();
            auth.push(0);
            r.auth = Bytes::from(auth);
        }
    }
}

/// Signs one request alone (a group of one) and appends one MAC for each
/// `(replica, request key)`.
pub fn authenticate_request(key: &SigningKey, macs: &[(ReplicaId, [u8; 32])], request: &mut Request) {
    authenticate_group(key, macs, std::slice::from_mut(request));
}

/// Signs `request` alone (a group of one) as the client holding `key`,
/// setting its client id too.
pub fn sign_request(key: &SigningKey, request: &mut Request) {
    sign_group(key, std::slice::from_mut(request));
}

/// Signs at most [`MAX_GROUP`] requests with one signature over their
/// hash tree's root, and writes each one's `auth`: key, signature, proof,
/// then the MAC section when `macs` is not empty.
fn sign_chunk(key: &SigningKey, macs: &[(ReplicaId, [u8; 32])], requests: &mut [Request]) {
    let public = key.verifying_key().to_bytes();
    let id = client_id(&public);
    let leaves: Vec<[u8; HASH_BYTES]> = requests
        .iter_mut()
        .map(|r| {
            r.client = id;
            request_leaf(r)
        })
        .collect();
    // Levels of the tree, leaves first; an odd node out is carried up as it is.
    let mut levels: Vec<Vec<[u8; HASH_BYTES]>> = vec![leaves];
    while levels.last().map_or(0, Vec::len) > 1 {
        let below = levels.last().expect("a level");
        let above = below.chunks(2).map(|p| if p.len() == 2 { node(&p[0], &p[1]) } else { p[0] }).collect();
        levels.push(above);
    }
    let root = levels.last().and_then(|l| l.first()).copied().unwrap_or([0; HASH_BYTES]);
    let signature = key.sign(&group_message(&root)).to_bytes();
    let mac_bytes = if macs.is_empty() { 0 } else { 1 + macs.len() * MAC_ENTRY_BYTES };
    for (i, r) in requests.iter_mut().enumerate() {
        let mut auth = Vec::with_capacity(AUTH_BYTES + PROOF_HEADER + (levels.len() - 1) * HASH_BYTES + mac_bytes);
        auth.extend_from_slice(&public);
        auth.extend_from_slice(&signature);
        auth.extend_from_slice(&[0, 0]);
        let (mut at, mut depth, mut sides) = (i, 0u8, 0u8);
        for level in &levels[..levels.len() - 1] {
            let sibling = at ^ 1;
            if let Some(h) = level.get(sibling) {
                if sibling < at {
                    sides |= 1 << depth;
                }
                auth.extend_from_slice(h);
                depth += 1;
            }
            at >>= 1;
        }
        auth[AUTH_BYTES] = depth;
        auth[AUTH_BYTES + 1] = sides;
        if !macs.is_empty() {
            auth.push(macs.len() as u8);
            for (replica, k) in macs {
                auth.extend_from_slice(&replica.0.to_le_bytes());
                auth.extend_from_slice(&mac_of(k, &levels[0][i]));
            }
        }
        r.auth = Bytes::from(auth);
    }
}

/// The parts of a well-formed signed `auth` field.
struct Layout<'a> {
    public: [u8; 32],
    signature: [u8; 64],
    sides: u8,
    siblings: &'a [u8],
    /// The MAC entries, when the field has a MAC section.
    macs: Option<&'a [u8]>,
}

/// Splits a signed `auth` field, or `None` when it is malformed: too
/// short, too deep a proof, stray bits in `sides`, or a MAC section whose
/// count does not match its length.
fn layout(auth: &[u8]) -> Option<Layout<'_>> {
    let (&depth, rest) = auth.get(AUTH_BYTES..)?.split_first()?;
    let (&sides, rest) = rest.split_first()?;
    let depth = depth as usize;
    if depth > MAX_GROUP_DEPTH || (depth < 8 && sides >> depth != 0) {
        return None;
    }
    let siblings = rest.get(..depth * HASH_BYTES)?;
    let macs = match rest[depth * HASH_BYTES..].split_first() {
        None => None,
        Some((&count, entries)) if entries.len() == count as usize * MAC_ENTRY_BYTES => Some(entries),
        Some(_) => return None,
    };
    Some(Layout {
        public: auth[..32].try_into().expect("32 bytes"),
        signature: auth[32..AUTH_BYTES].try_into().expect("64 bytes"),
        sides,
        siblings,
        macs,
    })
}

/// The MAC `request`'s authenticator holds for `replica`, if any (and if
/// the authenticator is well formed).
pub fn mac_for(request: &Request, replica: ReplicaId) -> Option<[u8; MAC_BYTES]> {
    layout(&request.auth)?.macs?.chunks_exact(MAC_ENTRY_BYTES).find_map(|e| {
        (u32::from_le_bytes(e[..4].try_into().expect("4 bytes")) == replica.0)
            .then(|| e[4..].try_into().expect("16 bytes"))
    })
}

/// Whether `request`'s MAC for `replica` checks under one of `keys` (in
/// constant time). The request is hashed once, and not at all when it
/// holds no MAC for `replica`.
pub fn mac_checks_any(request: &Request, replica: ReplicaId, keys: &[[u8; 32]]) -> bool {
    use hmac::Mac;
    let Some(m) = mac_for(request, replica) else { return false };
    let leaf = request_leaf(request);
    keys.iter().any(|k| keyed_mac(k, &leaf).verify_truncated_left(&m).is_ok())
}

/// Whether `request`'s MAC for `replica` checks under `key` (in constant
/// time).
pub fn mac_checks(request: &Request, replica: ReplicaId, key: &[u8; 32]) -> bool {
    mac_checks_any(request, replica, std::slice::from_ref(key))
}

/// Why a request was refused before execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The operation is larger than allowed.
    Oversized,
    /// `auth` is not a key, a signature and a well-formed proof (plus a
    /// well-formed MAC section), or its key is not a valid, non-weak point.
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
    /// Signatures per batch (each batch is one rayon task).
    pub chunk: usize,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        VerifyLimits { max_operation_bytes: 1 << 20, chunk: 64 }
    }
}

/// What a signature check needs: who, what signature, and over which root.
/// Also the memo's key: a verdict holds for these exact bytes only.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Claim {
    public: [u8; 32],
    signature: [u8; 64],
    root: [u8; HASH_BYTES],
}

struct Parsed {
    claim: Claim,
}

fn parse(request: &Request) -> Result<Parsed, Rejection> {
    let l = layout(&request.auth).ok_or(Rejection::BadAuthFormat)?;
    if client_id(&l.public) != request.client {
        return Err(Rejection::ClientIdMismatch);
    }
    client_key(&l.public)?;
    let mut root = request_leaf(request);
    for (j, sibling) in l.siblings.chunks_exact(HASH_BYTES).enumerate() {
        let sibling: &[u8; HASH_BYTES] = sibling.try_into().expect("32 bytes");
        root = if l.sides >> j & 1 == 1 { node(sibling, &root) } else { node(&root, sibling) };
    }
    Ok(Parsed { claim: Claim { public: l.public, signature: l.signature, root } })
}

/// Client keys already checked: a point decompression costs about as much
/// as a third of a signature check, and a client signs many requests with
/// one key. Bounded: emptied when full.
fn client_key(public: &[u8; 32]) -> Result<(), Rejection> {
    const KEYS_MAX: usize = 1 << 16;
    static KEYS: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Mutex::new(HashSet::new()));
    if keys.lock().unwrap_or_else(|e| e.into_inner()).contains(public) {
        return Ok(());
    }
    if !key_is_valid(public) {
        return Err(Rejection::BadAuthFormat);
    }
    let mut g = keys.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() >= KEYS_MAX {
        g.clear();
    }
    g.insert(*public);
    Ok(())
}

/// The rule for keys, the same on every replica: a valid point that is not
/// of small order (a small-order key would let anyone sign for it).
pub fn key_is_valid(public: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(public).is_ok_and(|k| !k.is_weak())
}

/// Whether `signature` is `public`'s over `message` by the cluster-wide
/// rule (ZIP 215's cofactored equation; the key must also pass
/// [`key_is_valid`]).
pub fn signature_checks(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    key_is_valid(public)
        && ed25519_zebra::VerificationKey::try_from(*public)
            .is_ok_and(|k| k.verify(&Signature::from_bytes(signature), message).is_ok())
}

/// Signatures already found valid, by their exact claim: the requests of
/// a group arrive in several frames and PRE-PREPAREs, and each needs its
/// signature checked once. Verification is a pure function of the claim,
/// so remembering it cannot change a verdict. Bounded: the oldest go first.
#[derive(Default)]
struct Memo {
    known: HashSet<Claim>,
    order: VecDeque<Claim>,
}

fn memo() -> std::sync::MutexGuard<'static, Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

impl Memo {
    fn insert(&mut self, claim: Claim) {
        if self.known.insert(claim.clone()) {
            self.order.push_back(claim);
            while self.order.len() > MEMO_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }
}

/// Forgets every signature found valid, so that the next checks are done
/// in full: for benchmarks that measure the check itself.
pub fn forget_verified_signatures() {
    let mut m = memo();
    m.known.clear();
    m.order.clear();
}

/// One cofactored batch check (ZIP 215): it accepts exactly when every
/// signature alone would (but with negligible probability), whatever the
/// batch holds.
fn batch_ok(items: &[&Parsed]) -> bool {
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for p in items {
        let message = group_message(&p.claim.root);
        let key = ed25519_zebra::VerificationKeyBytes::from(p.claim.public);
        batch.queue((key, Signature::from_bytes(&p.claim.signature), &message[..]));
    }
    batch.verify(rand_core::OsRng).is_ok()
}

/// Verifies one request's client signature with the cluster-wide rule.
pub fn verify_request(request: &Request) -> Result<(), Rejection> {
    let p = parse(request)?;
    if memo().known.contains(&p.claim) {
        return Ok(());
    }
    if batch_ok(&[&p]) {
        memo().insert(p.claim);
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
        <[u8; 64]>::try_from(signature).is_ok_and(|sig| signature_checks(key, message, &sig))
    }

    fn key_is_valid(&self, key: &[u8; 32]) -> bool {
        key_is_valid(key)
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
/// (size, format, client id, range, duplicates, and each request's proof
/// up to its group's root), then each distinct signature not already known
/// once, in chunks of `limits.chunk`, one rayon task per chunk, on `pool`.
/// Verdicts come back in input order.
pub fn verify_batch(
    requests: Vec<Request>,
    limits: VerifyLimits,
    in_range: impl Fn(ClientId, RequestId) -> bool + Sync,
    pool: &rayon::ThreadPool,
) -> Verdicts {
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
    // Each distinct claim not already known is checked once, however many
    // requests of its group this drain holds.
    let mut unique: Vec<&Parsed> = Vec::new();
    let mut claim_of: Vec<Option<usize>> = vec![None; parsed.len()];
    {
        let memo = memo();
        let mut seen_claims: HashMap<&Claim, usize> = HashMap::new();
        for (i, p) in parsed.iter().enumerate() {
            let Ok(p) = p else { continue };
            if memo.known.contains(&p.claim) {
                continue;
            }
            let at = *seen_claims.entry(&p.claim).or_insert_with(|| {
                unique.push(p);
                unique.len() - 1
            });
            claim_of[i] = Some(at);
        }
    }
    let chunk = limits.chunk.max(1);
    // One chunk or less is checked here: the caller would wait for it on
    // the pool all the same, and waking the pool costs two thread hops
    // and its workers' spinning before they sleep again, which on a busy
    // machine is CPU taken from everything else.
    let bad: Vec<bool> = if unique.len() <= chunk {
        let mut bad = vec![false; unique.len()];
        if !unique.is_empty() {
            find_bad(&unique, &mut bad);
        }
        bad
    } else {
        pool.install(|| {
            unique
                .par_chunks(chunk)
                .flat_map_iter(|items| {
                    let mut bad = vec![false; items.len()];
                    find_bad(items, &mut bad);
                    bad
                })
                .collect()
        })
    };
    {
        let mut memo = memo();
        for (p, _) in unique.iter().zip(&bad).filter(|(_, b)| !**b) {
            memo.insert(p.claim.clone());
        }
    }
    let signatures_checked = bad.len();
    let verdicts = requests
        .into_iter()
        .zip(parsed)
        .zip(claim_of)
        .map(|((r, p), claim)| match p {
            Err(why) => Err((r, why)),
            Ok(_) if claim.is_some_and(|c| bad[c]) => Err((r, Rejection::BadSignature)),
            Ok(_) => Ok(r),
        })
        .collect();
    Verdicts { verdicts, signatures_checked }
}

/// What [`verify_batch`] found.
pub struct Verdicts {
    /// Each request, accepted or refused with the reason, in input order.
    pub verdicts: Vec<Result<Request, (Request, Rejection)>>,
    /// Distinct signatures it checked: fewer than the requests when
    /// clients sign in groups, or when their signatures were known.
    pub signatures_checked: usize,
}

#[cfg(test)]
mod tests;
