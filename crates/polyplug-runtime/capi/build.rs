//! Gives the shared library the SONAME of its major version on Linux
//! (`libpolyplug_runtime_capi.so.0`), so programs linked against it keep working across
//! compatible updates and refuse an incompatible one, as with any C library.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libpolyplug_runtime_capi.so.0");
    }
}
