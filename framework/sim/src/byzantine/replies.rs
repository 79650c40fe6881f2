//! Strategies that lie to clients. The client's decisions (the real ones,
//! `palisade_host::client`) must never accept what no correct replica
//! executed, and must still complete with f of these replicas.

use super::{ByzCtx, Outgoing, Strategy};
use bytes::Bytes;
use palisade_core::{ClientId, Digest, PeerMessage, ReplicaId, RequestId};
use palisade_host::ClientMail;
use palisade_wire::envelope::Answer;

/// The same lie from every Byzantine replica, so that colluders agree: a
/// result one off the real one, or made from a digest it was only meant
/// to send.
fn lie(answer: &Answer) -> Bytes {
    match answer {
        Answer::Full(result) | Answer::TentativeFull(result) => {
            let mut v = result.to_vec();
            match v.first_mut() {
                Some(b) => *b = b.wrapping_add(1),
                None => v.push(1),
            }
            Bytes::from(v)
        }
        Answer::Digest(d) | Answer::TentativeDigest(d) | Answer::TooLarge { digest: d, .. } => {
            Bytes::copy_from_slice(&d.0[..8])
        }
    }
}

/// Honest with peers.
fn pass(to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
    vec![Outgoing::now(to, msg)]
}

/// Wrong results, in full.
pub(super) struct ForgedReplies;

impl Strategy for ForgedReplies {
    fn name(&self) -> &'static str {
        "forged-replies"
    }
    fn outgoing(&mut self, _: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        pass(to, msg)
    }
    fn reply(&mut self, _: &mut ByzCtx<'_>, mail: ClientMail) -> Option<ClientMail> {
        Some(match mail {
            ClientMail::Answer { client, view, request, answer } => {
                // A lie about a tentative execution says it is tentative.
                let forged = Answer::Full(lie(&answer));
                let forged = if answer.is_tentative() { forged.tentative() } else { forged };
                ClientMail::Answer { client, view, request, answer: forged }
            }
            refusal => refusal,
        })
    }
}

/// Digests of results nobody computed (the same for every colluder).
pub(super) struct WrongDigestReplies;

impl Strategy for WrongDigestReplies {
    fn name(&self) -> &'static str {
        "wrong-digest-replies"
    }
    fn outgoing(&mut self, _: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        pass(to, msg)
    }
    fn reply(&mut self, _: &mut ByzCtx<'_>, mail: ClientMail) -> Option<ClientMail> {
        Some(match mail {
            ClientMail::Answer { client, view, request, answer } => {
                let forged = Answer::Digest(Digest::of(&lie(&answer)));
                let answer = if answer.is_tentative() { forged.tentative() } else { forged };
                ClientMail::Answer { client, view, request, answer }
            }
            refusal => refusal,
        })
    }
}

/// Only ever the digest of the right result, or a claim that the result
/// is too large to send: a designated replier that withholds the full
/// result, even when asked again.
pub(super) struct WithheldReplies;

impl Strategy for WithheldReplies {
    fn name(&self) -> &'static str {
        "withheld-replies"
    }
    fn outgoing(&mut self, _: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        pass(to, msg)
    }
    fn reply(&mut self, ctx: &mut ByzCtx<'_>, mail: ClientMail) -> Option<ClientMail> {
        Some(match mail {
            ClientMail::Answer { client, view, request, answer: Answer::Full(result) } => {
                let digest = Digest::of(&result);
                let answer = if ctx.rng.chance(0.5) {
                    Answer::TooLarge { len: result.len() as u64 + (64 << 20), digest }
                } else {
                    Answer::Digest(digest)
                };
                ClientMail::Answer { client, view, request, answer }
            }
            ClientMail::Answer { client, view, request, answer: Answer::TentativeFull(result) } => {
                let answer = Answer::TentativeDigest(Digest::of(&result));
                ClientMail::Answer { client, view, request, answer }
            }
            other => other,
        })
    }
}

/// Answers that belong to another request, or go to another client.
pub(super) struct MisdirectedReplies;

impl Strategy for MisdirectedReplies {
    fn name(&self) -> &'static str {
        "misdirected-replies"
    }
    fn outgoing(&mut self, _: &mut ByzCtx<'_>, to: ReplicaId, msg: PeerMessage) -> Vec<Outgoing> {
        pass(to, msg)
    }
    fn reply(&mut self, ctx: &mut ByzCtx<'_>, mail: ClientMail) -> Option<ClientMail> {
        Some(match mail {
            ClientMail::Answer { client, view, request, answer } => {
                if ctx.rng.chance(0.5) {
                    // This result, said to answer the client's next request.
                    ClientMail::Answer { client, view, request: RequestId(request.0 + 1), answer }
                } else {
                    // This result, to a neighbour.
                    let other = ClientId(client.0 % 4 + 1);
                    ClientMail::Answer { client: other, view, request, answer }
                }
            }
            refusal => refusal,
        })
    }
}
