//! Replays the corpus of every fuzz target (`fuzz/corpus/<target>/`): each input the fuzzer
//! kept runs through the entry point the target calls, without a panic.

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let inputs: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().collect();
    assert!(!inputs.is_empty(), "the corpus of {target} is empty");
    for input in inputs {
        let bytes = std::fs::read(input.path()).expect("corpus input");
        if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
            panic!("{target}: {} panics", input.path().display());
        }
    }
}

#[test]
fn every_corpus_input_runs_through_its_target() {
    let targets: [(&str, fn(&[u8])); 8] = [
        ("stun", sfu::fuzz::stun),
        ("srtp", sfu::fuzz::srtp),
        ("rtcp", sfu::fuzz::rtcp),
        ("engine", sfu::fuzz::engine),
        ("client_message", signaling::fuzz::client_message),
        ("task", signaling::fuzz::task),
        ("access_token", signaling::fuzz::access_token),
        ("recording", recorder::fuzz::recording),
    ];
    for (target, entry) in targets {
        replay(target, entry);
    }
}
