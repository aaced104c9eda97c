#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzz::client_message(data));
