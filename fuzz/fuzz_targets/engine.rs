#![no_main]

// The engine runs `rtc` isolated and fails the participant a panic of it reaches (a handled
// case): a quiet hook in place of libfuzzer-sys's aborting one lets such panics be caught. A
// panic that escapes the entry point still ends the run.
static QUIET: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    sfu::fuzz::engine(data)
});
