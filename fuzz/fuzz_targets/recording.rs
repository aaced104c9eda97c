#![no_main]

// The recorder runs `rtc`'s depacketizers isolated and drops a frame that panics one as
// malformed (a handled case): a quiet hook in place of libfuzzer-sys's aborting one lets
// such panics be caught. A panic that escapes the entry point still ends the run.
static QUIET: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    recorder::fuzz::recording(data)
});
