//! The web client is embedded with `include_dir!`, which cargo does not track:
//! rebuild the edge whenever anything under `web/` changes.
fn main() {
    println!("cargo:rerun-if-changed=../web");
}
