//! A replica answering whatever arrives as a connection's first message.
#![no_main]
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use palisade_core::ReplicaId;
use palisade_wire::handshake::{Keyring, Responder};

struct Counter(u64);

impl rand_core_shim::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_shim::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core_shim::CryptoRng for Counter {}

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let peer = SigningKey::from_bytes(&[8; 32]);
    let keyring = Keyring {
        cluster: 0x0102_0304_0506_0708,
        replicas: [(ReplicaId(0), key.verifying_key()), (ReplicaId(1), peer.verifying_key())].into_iter().collect(),
        view_manager: peer.verifying_key(),
        accept_clients: true,
    };
    let mut rng = Counter(1);
    if let Ok((responder, _reply)) = Responder::on_hello(ReplicaId(0), &key, &keyring, data, &mut rng) {
        // Whatever follows as Finish must be refused without the identity key.
        let _ = responder.on_finish(data);
    }
});
