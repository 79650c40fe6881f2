//! Signing in groups: the requests a client issues together share one
//! signature (docs/wire.md, section 7).
//!
//! A client with many operations in flight issues new ones in bursts, as
//! each reply frame settles several at once. The first invocation of a
//! burst leads: it yields once, so that the other invocations ready to run
//! queue their requests behind it, then signs everything queued, a group
//! of at most [`ClientOptions::sign_group_max`](crate::ClientOptions) at a
//! time, and hands each request back. A lone request is signed at once,
//! as a group of one, after that one yield.

use ed25519_dalek::SigningKey;
use palisade_core::{ReplicaId, Request};
use palisade_wire::{verify, RequestAuth};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// How long an invocation waits for the leader of its burst before it signs
/// what is queued itself: far longer than a leader's one yield, far shorter
/// than any timeout a caller sets.
const TAKE_OVER_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// A request waiting for its group's signature.
struct Waiting {
    request: Request,
    auth: RequestAuth,
    done: oneshot::Sender<Request>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether an invocation is leading: it signs whatever is queued
    /// before it stops.
    leading: bool,
}

/// One client's group signer.
pub(crate) struct Signer {
    queue: Mutex<Queue>,
    max: usize,
}

/// The leader's duty, done when it is dropped: so that a leader whose
/// caller gives up while it yields still signs what queued behind it.
struct Lead<'a> {
    signer: &'a Signer,
    key: &'a SigningKey,
    request_keys: &'a Mutex<BTreeMap<ReplicaId, [u8; 32]>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.signer.sign_queued(self.key, self.request_keys);
    }
}

impl Signer {
    /// A signer covering at most `max` requests (at least one) with one
    /// signature.
    pub(crate) fn new(max: usize) -> Signer {
        Signer { queue: Mutex::default(), max: max.clamp(1, verify::MAX_GROUP) }
    }

    /// `request` signed as `auth` says (with a MAC for every replica in
    /// `request_keys` when `auth` is authenticators; a read-only request
    /// unsigned), or `None` if the leader signing it panicked.
    pub(crate) async fn sign(
        &self,
        key: &SigningKey,
        request_keys: &Mutex<BTreeMap<ReplicaId, [u8; 32]>>,
        mut request: Request,
        auth: RequestAuth,
    ) -> Option<Request> {
        // A read is answered to this client's authenticated channel and is
        // never proposed or relayed, so nobody needs proof that it sent it.
        if !auth.clients_sign() || request.read_only {
            return Some(request);
        }
        if self.max == 1 {
            sign(key, request_keys, auth, std::slice::from_mut(&mut request));
            return Some(request);
        }
        let (done, mut signed) = oneshot::channel();
        let lead = {
            let mut q = self.queue.lock();
            q.waiting.push(Waiting { request, auth, done });
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            let lead = Lead { signer: self, key, request_keys };
            tokio::task::yield_now().await;
            drop(lead);
            return signed.await.ok();
        }
        // A leader's caller may stop polling it without dropping it: never
        // wait on a leader for long, take over its duty instead.
        match tokio::time::timeout(TAKE_OVER_AFTER, &mut signed).await {
            Ok(r) => r.ok(),
            Err(_) => {
                self.sign_queued(key, request_keys);
                signed.await.ok()
            }
        }
    }

    /// Signs everything queued, group by group, until the queue is empty;
    /// then stops leading (under the same lock, so nothing queued is left
    /// without a leader). An invocation that takes over from a stalled
    /// leader runs it too: two signers at once take disjoint groups.
    fn sign_queued(&self, key: &SigningKey, request_keys: &Mutex<BTreeMap<ReplicaId, [u8; 32]>>) {
        loop {
            let group: Vec<Waiting> = {
                let mut q = self.queue.lock();
                if q.waiting.is_empty() {
                    q.leading = false;
                    return;
                }
                let n = q.waiting.len().min(self.max);
                q.waiting.drain(..n).collect()
            };
            // The mode is the cluster's and changes only with a new epoch:
            // a group almost always has one.
            let (with_macs, signed_only): (Vec<Waiting>, Vec<Waiting>) =
                group.into_iter().partition(|w| w.auth == RequestAuth::Authenticators);
            for (auth, part) in [(RequestAuth::Authenticators, with_macs), (RequestAuth::Signatures, signed_only)] {
                if part.is_empty() {
                    continue;
                }
                let (mut requests, done): (Vec<Request>, Vec<oneshot::Sender<Request>>) =
                    part.into_iter().map(|w| (w.request, w.done)).unzip();
                sign(key, request_keys, auth, &mut requests);
                for (r, d) in requests.into_iter().zip(done) {
                    // The caller may have given up.
                    let _ = d.send(r);
                }
            }
        }
    }
}

fn sign(
    key: &SigningKey,
    request_keys: &Mutex<BTreeMap<ReplicaId, [u8; 32]>>,
    auth: RequestAuth,
    group: &mut [Request],
) {
    match auth {
        RequestAuth::Authenticators => {
            let macs: Vec<(ReplicaId, [u8; 32])> = request_keys.lock().iter().map(|(r, k)| (*r, *k)).collect();
            verify::authenticate_group(key, &macs, group);
        }
        RequestAuth::Signatures => verify::sign_group(key, group),
        RequestAuth::TrustPrimary => {}
    }
}
