//! Tests of request signatures, groups, authenticators and batch verdicts.

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
    assert!(!AdminCrypto.signature_checks(&other.verifying_key().to_bytes(), &body.signing_bytes(), &req.signature));
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
    assert_eq!(r.auth.len(), AUTH_BYTES + PROOF_HEADER + 1 + 2 * (4 + MAC_BYTES));
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
    let sig = mallory.sign(&group_message(&request_leaf(&r)));
    let mut auth = r.auth[..32].to_vec();
    auth.extend_from_slice(&sig.to_bytes());
    auth.extend_from_slice(&[0, 0]);
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
    // Chunks of 16 on the pool, and one chunk of everything checked inline.
    for (threads, chunk) in [(1, 16), (2, 16), (2, 512)] {
        let limits = VerifyLimits { chunk, ..VerifyLimits::default() };
        let out = verify_batch(reqs.clone(), limits, |_, id| id.0 != 150, &pool(threads)).verdicts;
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

fn unsigned(id: u64, len: usize) -> Request {
    Request {
        client: ClientId(0),
        id: RequestId(id),
        read_only: id % 3 == 0,
        operation: Bytes::from(vec![id as u8; len]),
        auth: Bytes::new(),
    }
}

fn with_auth(r: &Request, auth: Vec<u8>) -> Request {
    Request { auth: Bytes::from(auth), ..r.clone() }
}

#[test]
fn one_signature_covers_a_group_and_binds_each_request_to_its_own_place() {
    let key = crate::keys::generate(&mut rand_core::OsRng);
    for size in [1usize, 2, 3, 5, 8, 33, MAX_GROUP, MAX_GROUP + 3] {
        let mut group: Vec<Request> = (0..size as u64).map(|i| unsigned(i + 1, (i % 7) as usize)).collect();
        sign_group(&key, &mut group);
        for r in &group {
            assert_eq!(verify_request(r), Ok(()), "group of {size}, request {}", r.id.0);
        }
        let depth = |r: &Request| r.auth[AUTH_BYTES] as usize;
        let deepest = group.iter().map(depth).max().unwrap();
        assert_eq!(deepest, (size.min(MAX_GROUP) as f64).log2().ceil() as usize, "a balanced tree");
        assert!(group.len() <= MAX_GROUP || group[0].auth[32..96] != group[MAX_GROUP].auth[32..96]);
        if size < 2 {
            continue;
        }
        let sigs: std::collections::BTreeSet<&[u8]> = group.iter().map(|r| &r.auth[32..96]).collect();
        assert_eq!(sigs.len(), size.div_ceil(MAX_GROUP), "one signature per group of at most {MAX_GROUP}");
        // Any change to a request, or a proof moved to another request, fails.
        let mut altered = group[1].clone();
        altered.operation = Bytes::from_static(b"forged");
        assert_eq!(verify_request(&altered), Err(Rejection::BadSignature));
        let moved = with_auth(&group[0], group[1].auth.to_vec());
        assert_eq!(verify_request(&moved), Err(Rejection::BadSignature));
        let mut flipped = group[1].auth.to_vec();
        flipped[AUTH_BYTES + 1] ^= 1;
        assert_eq!(verify_request(&with_auth(&group[1], flipped)), Err(Rejection::BadSignature));
        let mut sibling = group[1].auth.to_vec();
        sibling[AUTH_BYTES + PROOF_HEADER] ^= 1;
        assert_eq!(verify_request(&with_auth(&group[1], sibling)), Err(Rejection::BadSignature));
    }
}

#[test]
fn a_leaf_hashed_in_place_is_the_leaf_of_the_signing_bytes() {
    for r in [unsigned(3, 0), unsigned(4, 1), unsigned(5, 5000)] {
        let whole: [u8; HASH_BYTES] =
            Sha256::new().chain_update([0u8]).chain_update(r.signing_bytes()).finalize().into();
        assert_eq!(request_leaf(&r), whole);
    }
}

#[test]
fn malformed_proofs_are_refused_by_their_format() {
    let key = crate::keys::generate(&mut rand_core::OsRng);
    let mut group: Vec<Request> = (1..=4).map(|i| unsigned(i, 3)).collect();
    sign_group(&key, &mut group);
    let r = &group[0];
    let base = r.auth.to_vec();
    let mut too_deep = base.clone();
    too_deep[AUTH_BYTES] = MAX_GROUP_DEPTH as u8 + 1;
    too_deep.extend(vec![0; 32 * 8]);
    let mut stray_side = base.clone();
    stray_side[AUTH_BYTES + 1] |= 0x80;
    let mut short_proof = base.clone();
    short_proof.truncate(AUTH_BYTES + PROOF_HEADER + 40);
    let mut bad_macs = base.clone();
    bad_macs.extend_from_slice(&[2, 0, 0]);
    for (what, auth) in [
        ("too deep", too_deep),
        ("stray side bit", stray_side),
        ("proof cut short", short_proof),
        ("MAC count and length disagree", bad_macs),
        ("no proof header", base[..AUTH_BYTES].to_vec()),
    ] {
        let bad = with_auth(r, auth);
        assert_eq!(verify_request(&bad), Err(Rejection::BadAuthFormat), "{what}");
        assert_eq!(mac_for(&bad, ReplicaId(0)), None, "{what}");
    }
    let mut no_macs = base.clone();
    no_macs.push(0);
    assert_eq!(verify_request(&with_auth(r, no_macs)), Ok(()), "an empty MAC section is well formed");
}

/// Aardvark's split, tried through the memo: a faulty client sends one
/// request of a good group under a bad signature. Every replica must
/// refuse it, whether or not it already checked the group's good one.
#[test]
fn a_bad_signature_on_a_known_root_is_refused_whatever_was_seen_first() {
    let key = crate::keys::generate(&mut rand_core::OsRng);
    let mut group: Vec<Request> = (1..=40).map(|i| unsigned(1000 + i, 5)).collect();
    sign_group(&key, &mut group);
    let mut sig = group[7].auth.to_vec();
    sig[40] ^= 0x10;
    let forged = with_auth(&group[7], sig);
    let limits = VerifyLimits { chunk: 8, ..VerifyLimits::default() };
    let p = pool(2);
    // Bad one first, then the group; then the bad one again after.
    let first = verify_batch(vec![forged.clone()], limits, |_, _| true, &p).verdicts;
    assert!(matches!(first[0], Err((_, Rejection::BadSignature))));
    let mut mixed = group.clone();
    mixed.insert(3, forged.clone());
    mixed.remove(8);
    let out = verify_batch(mixed.clone(), limits, |_, _| true, &p);
    assert_eq!(out.signatures_checked, 2, "the group's good signature once for its 39 requests, and the bad one");
    let out = out.verdicts;
    for (r, v) in mixed.iter().zip(&out) {
        assert_eq!(v.is_ok(), r.auth != forged.auth || r.id != forged.id, "request {}", r.id.0);
    }
    assert_eq!(verify_request(&forged), Err(Rejection::BadSignature));
    assert!(verify_batch(vec![forged], limits, |_, _| true, &p).verdicts[0].is_err());
    assert_eq!(verify_request(&group[7]), Ok(()));
}

/// A signature crafted with a small-order component in R: valid by the
/// cofactored equation, invalid by the cofactorless one. With a batch
/// check that leaves the cofactor out, its verdict followed its batch
/// mates (one batch in eight accepted it), so a faulty client could
/// split replicas that batch differently. Every verdict must now be
/// the same: alone, and in every batch.
#[test]
fn a_signature_with_a_small_order_component_gets_one_verdict_in_every_batch() {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest, Sha512};
    let a = Scalar::from_bytes_mod_order([7u8; 32]);
    let public = (a * ED25519_BASEPOINT_POINT).compress().to_bytes();
    let mut r = unsigned(77, 9);
    r.client = client_id(&public);
    let message = group_message(&request_leaf(&r));
    let nonce = Scalar::from_bytes_mod_order([9u8; 32]);
    let big_r = (nonce * ED25519_BASEPOINT_POINT + EIGHT_TORSION[1]).compress().to_bytes();
    let k = Scalar::from_hash(Sha512::new().chain_update(big_r).chain_update(public).chain_update(message));
    let s = nonce + k * a;
    let mut auth = public.to_vec();
    auth.extend_from_slice(&big_r);
    auth.extend_from_slice(s.as_bytes());
    auth.extend_from_slice(&[0, 0]);
    r.auth = Bytes::from(auth);
    forget_verified_signatures();
    let alone = verify_request(&r);
    assert_eq!(alone, Ok(()), "valid by the cofactored equation");
    let key = crate::keys::generate(&mut rand_core::OsRng);
    let p = pool(1);
    for mates in 0..24u64 {
        forget_verified_signatures();
        let mut batch: Vec<Request> = (0..mates).map(|i| signed(&key, 1000 + 100 * mates + i)).collect();
        batch.insert((mates / 2) as usize, r.clone());
        let limits = VerifyLimits { chunk: 1 + mates as usize % 5, ..VerifyLimits::default() };
        let out = verify_batch(batch, limits, |_, _| true, &p);
        assert!(out.verdicts.iter().all(|v| v.is_ok()), "batch with {mates} mates: the same verdict");
    }
}
