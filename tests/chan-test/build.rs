//! Links the image with the runtime's linker script.
fn main() {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let script = dir.join("../../rt/linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let script = script.canonicalize().expect("rt/linker.ld exists");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
