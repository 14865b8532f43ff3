#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fleet_proto::fuzz::decode_batch(data));
