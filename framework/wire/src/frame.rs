//! Length-prefixed framing.
//!
//! ```text
//! frame = length:u32le  payload[length]
//! ```
//!
//! The length is checked against the configured maximum before a single
//! byte of the payload is buffered, so an absurd length costs nothing but a
//! typed error. After the handshake the payload is `body || mac[32]`
//! (see [`crate::channel`]).

use crate::WireError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Default largest payload: 4 MiB, enough for a full batch.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;

/// Appends a frame with `payload` to `out`.
pub fn write_frame(payload: &[u8], out: &mut BytesMut) {
    out.reserve(LENGTH_BYTES + payload.len());
    out.put_u32_le(payload.len() as u32);
    out.put_slice(payload);
}

/// Cuts frames out of a byte stream.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder { max_frame_bytes }
    }

    /// The largest payload accepted.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Takes the next complete frame's payload from the front of `buf`, if
    /// `buf` holds one. `Ok(None)` means more bytes are needed; an error
    /// means the stream is unusable and the connection must be closed.
    /// When a frame is incomplete, `buf` is asked to reserve only what the
    /// (already validated) length needs.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        if buf.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame_bytes {
            return Err(WireError::FrameTooLarge { len, max: self.max_frame_bytes });
        }
        if buf.len() < LENGTH_BYTES + len {
            buf.reserve(LENGTH_BYTES + len - buf.len());
            return Ok(None);
        }
        buf.advance(LENGTH_BYTES);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// Decodes a buffer that must hold exactly one frame (datagram-style use
    /// and tests): a partial frame is [`WireError::Truncated`], and bytes
    /// after the frame are [`WireError::TrailingBytes`].
    pub fn decode_exact(&self, bytes: &[u8]) -> Result<Bytes, WireError> {
        let mut buf = BytesMut::from(bytes);
        match self.decode(&mut buf)? {
            None => {
                let needed = if bytes.len() < LENGTH_BYTES {
                    LENGTH_BYTES
                } else {
                    LENGTH_BYTES + u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize
                };
                Err(WireError::Truncated { needed, got: bytes.len() })
            }
            Some(_) if !buf.is_empty() => Err(WireError::TrailingBytes(buf.len())),
            Some(payload) => Ok(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_any_point_reassemble() {
        let mut stream = BytesMut::new();
        write_frame(b"hello", &mut stream);
        write_frame(b"", &mut stream);
        write_frame(b"world!", &mut stream);
        let all = stream.freeze();
        for cut in 0..all.len() {
            let d = FrameDecoder::new(64);
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![Bytes::from_static(b"hello"), Bytes::new(), Bytes::from_static(b"world!")]);
        }
    }

    #[test]
    fn an_absurd_length_is_refused_before_buffering() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap = buf.capacity();
        assert_eq!(d.decode(&mut buf), Err(WireError::FrameTooLarge { len: u32::MAX as usize, max: 1024 }));
        assert_eq!(buf.capacity(), cap, "nothing was reserved for the claimed length");
    }

    #[test]
    fn exact_decoding_reports_truncation_and_trailing_bytes() {
        let d = FrameDecoder::new(64);
        let mut f = BytesMut::new();
        write_frame(b"abc", &mut f);
        assert_eq!(d.decode_exact(&f[..5]), Err(WireError::Truncated { needed: 7, got: 5 }));
        assert_eq!(d.decode_exact(&f[..2]), Err(WireError::Truncated { needed: 4, got: 2 }));
        let mut longer = f.to_vec();
        longer.push(0);
        assert_eq!(d.decode_exact(&longer), Err(WireError::TrailingBytes(1)));
        assert_eq!(d.decode_exact(&f).unwrap(), Bytes::from_static(b"abc"));
    }
}
