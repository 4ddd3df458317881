//! Exports the C API from test executables on Linux.
//!
//! The C host fixture is a shared object whose references to `polyplug_runtime_*` are resolved
//! by the dynamic linker against the executable that embeds this crate, exactly as for a C
//! application that links the runtime statically. GNU ld leaves an executable's symbols out of
//! its dynamic symbol table unless asked, so test targets ask for these symbols (and only these).
//! macOS executables export their global symbols already.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-link-arg-tests=-Wl,--export-dynamic-symbol=polyplug_runtime_*");
    }
}
