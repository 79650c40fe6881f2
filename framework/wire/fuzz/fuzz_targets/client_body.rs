//! decode_client: any bytes give a value or a typed error; values re-encode stably.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palisade_wire::envelope;

const CLUSTER: u64 = 0x0102_0304_0506_0708;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = envelope::decode_client(CLUSTER, data) {
        let again = envelope::encode(CLUSTER, &value);
        let back: palisade_wire::ClientMessage = envelope::decode(CLUSTER, &again).expect("a re-encoded value decodes");
        assert_eq!(back, value);
    }
});
