//! Authenticated frames after the handshake.
//!
//! ```text
//! frame   = length:u32le  body  mac[32]
//! mac     = HMAC-SHA256(direction_key, counter:u64le || body)
//! ```
//!
//! Each direction of a connection has its own key (derived in the
//! handshake) and its own counter, starting at 0 and incremented per frame.
//! The counter is not sent: both ends know it. A frame forged without the
//! key, replayed, reordered, dropped from the middle, or moved from another
//! connection (other keys) fails its MAC. After one failure the connection
//! is unusable (the counters no longer agree) and must be closed.

use crate::frame::LENGTH_BYTES;
use crate::WireError;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Bytes of the MAC that ends every authenticated frame.
pub const MAC_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

fn keyed(key: &[u8; 32]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// The sending half of a connection.
pub struct Sealer {
    mac: HmacSha256,
    counter: u64,
}

/// The receiving half of a connection.
pub struct Opener {
    mac: HmacSha256,
    counter: u64,
}

impl Sealer {
    /// A sealer with this direction's key.
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer { mac: keyed(key), counter: 0 }
    }

    /// Appends a complete authenticated frame carrying `body` to `out`.
    pub fn seal(&mut self, body: &[u8], out: &mut BytesMut) {
        out.reserve(LENGTH_BYTES + body.len() + MAC_BYTES);
        out.put_u32_le((body.len() + MAC_BYTES) as u32);
        out.put_slice(body);
        let tag = self.tag(body);
        out.put_slice(&tag);
    }

    /// Encodes `message` in an envelope for `cluster` straight into `out`
    /// and seals it, without an intermediate copy of the body.
    pub fn seal_message<T: Serialize>(&mut self, cluster: u64, message: &T, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32_le(0);
        crate::envelope::encode_into(cluster, message, out);
        let body_len = out.len() - start - LENGTH_BYTES;
        let tag = self.tag(&out[start + LENGTH_BYTES..]);
        out.put_slice(&tag);
        out[start..start + LENGTH_BYTES].copy_from_slice(&((body_len + MAC_BYTES) as u32).to_le_bytes());
    }

    fn tag(&mut self, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(&self.counter.to_le_bytes());
        mac.update(body);
        self.counter += 1;
        mac.finalize().into_bytes().into()
    }

    /// Frames sealed so far.
    pub fn sent(&self) -> u64 {
        self.counter
    }
}

impl Opener {
    /// An opener with this direction's key.
    pub fn new(key: &[u8; 32]) -> Opener {
        Opener { mac: keyed(key), counter: 0 }
    }

    /// Checks a frame payload (`body || mac`) and returns the body.
    pub fn open(&mut self, payload: Bytes) -> Result<Bytes, WireError> {
        if payload.len() < MAC_BYTES {
            return Err(WireError::Truncated { needed: MAC_BYTES, got: payload.len() });
        }
        let split = payload.len() - MAC_BYTES;
        let mut mac = self.mac.clone();
        mac.update(&self.counter.to_le_bytes());
        mac.update(&payload[..split]);
        mac.verify_slice(&payload[split..]).map_err(|_| WireError::BadMac)?;
        self.counter += 1;
        Ok(payload.slice(..split))
    }

    /// Frames opened so far.
    pub fn received(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    fn pair(key: [u8; 32]) -> (Sealer, Opener) {
        (Sealer::new(&key), Opener::new(&key))
    }

    fn frames(sealer: &mut Sealer, bodies: &[&[u8]]) -> Vec<Bytes> {
        let d = FrameDecoder::new(1 << 20);
        bodies
            .iter()
            .map(|b| {
                let mut out = BytesMut::new();
                sealer.seal(b, &mut out);
                d.decode_exact(&out).unwrap()
            })
            .collect()
    }

    #[test]
    fn frames_open_in_order() {
        let (mut s, mut o) = pair([1; 32]);
        for f in frames(&mut s, &[b"a", b"", b"ccc"]) {
            o.open(f).unwrap();
        }
        assert_eq!((s.sent(), o.received()), (3, 3));
    }

    #[test]
    fn a_flipped_bit_fails() {
        let (mut s, mut o) = pair([1; 32]);
        let f = frames(&mut s, &[b"hello"]).remove(0);
        let mut bad = f.to_vec();
        bad[0] ^= 1;
        assert_eq!(o.open(Bytes::from(bad)), Err(WireError::BadMac));
    }

    #[test]
    fn replayed_reordered_and_dropped_frames_fail() {
        let (mut s, mut o) = pair([1; 32]);
        let f = frames(&mut s, &[b"one", b"two", b"three"]);
        o.open(f[0].clone()).unwrap();
        assert_eq!(o.open(f[0].clone()), Err(WireError::BadMac), "replay");
        let (mut s2, mut o2) = pair([1; 32]);
        let g = frames(&mut s2, &[b"one", b"two"]);
        assert_eq!(o2.open(g[1].clone()), Err(WireError::BadMac), "reorder or drop");
        let _ = &mut s;
    }

    #[test]
    fn a_frame_from_another_connection_fails() {
        let (mut s1, _) = pair([1; 32]);
        let (_, mut o2) = pair([2; 32]);
        let f = frames(&mut s1, &[b"hello"]).remove(0);
        assert_eq!(o2.open(f), Err(WireError::BadMac));
    }

    #[test]
    fn sealing_a_message_equals_sealing_its_encoding() {
        let (mut a, _) = pair([3; 32]);
        let (mut b, mut o) = pair([3; 32]);
        let msg = crate::envelope::ClientMessage::Request(palisade_core::Request {
            client: palisade_core::ClientId(1),
            id: palisade_core::RequestId(2),
            read_only: false,
            operation: Bytes::from_static(b"op"),
            auth: Bytes::new(),
        });
        let mut x = BytesMut::new();
        a.seal_message(9, &msg, &mut x);
        let mut y = BytesMut::new();
        b.seal(&crate::envelope::encode(9, &msg), &mut y);
        assert_eq!(x, y);
        let payload = FrameDecoder::new(1024).decode_exact(&x).unwrap();
        let body = o.open(payload).unwrap();
        assert_eq!(crate::envelope::decode_client(9, &body).unwrap(), msg);
    }
}
