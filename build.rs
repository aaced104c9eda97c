//! Rebuilds the binary when a migration is added or changed: `sqlx::migrate!` embeds the
//! files of `migrations/` at compile time, and cargo does not otherwise notice new ones.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
