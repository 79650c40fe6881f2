//! decode_peer: any bytes give a value or a typed error; values re-encode stably.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palisade_wire::envelope;

const CLUSTER: u64 = 0x0102_0304_0506_0708;

fuzz_target!(|data: &[u8]| {
    if let Ok((epoch, value)) = envelope::decode_peer(CLUSTER, data) {
        let again = envelope::encode_peer(CLUSTER, epoch, &value);
        let back = envelope::decode_peer(CLUSTER, &again).expect("a re-encoded value decodes");
        assert_eq!(back, (epoch, value));
    }
});
