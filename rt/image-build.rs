//! The build script of every image crate (`build = "../../rt/image-build.rs"` in its manifest):
//! links the image's binaries with the runtime's linker script when building for the bare-metal
//! target; host builds of an image's library and tests need nothing.
use std::path::Path;

fn main() {
    // `file!()` is this script's path as rustc was given it: relative to the directory cargo ran
    // rustc in (the workspace root), which is an ancestor of the image's manifest dir.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let this = manifest
        .ancestors()
        .map(|dir| dir.join(file!()))
        .find(|p| p.is_file())
        .expect("image-build.rs is found from an ancestor of the manifest dir");
    let script = this.parent().expect("rt/ holds this script").join("linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let script = script.canonicalize().expect("rt/linker.ld exists");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
