//! polyplug-runtime's C API as libraries a C, C++ or Zig host links: `staticlib`
//! (`libpolyplug_runtime_capi.a`) and `cdylib` (`libpolyplug_runtime_capi.so` /
//! `.dylib`).
//!
//! The functions themselves live in [`polyplug_runtime`] (all named `polyplug_runtime_*`,
//! declared in its `include/polyplug.h`); this crate only packages them with the Rust
//! standard library into one artifact a C toolchain understands. Linking the static library
//! on Linux also needs `-lpthread -ldl -lm`:
//!
//! ```sh
//! cargo build --release -p polyplug-runtime-capi
//! cc -I crates/polyplug-runtime/include host.c \
//!     target/release/libpolyplug_runtime_capi.a -lpthread -ldl -lm -o host
//! ```

#![forbid(unsafe_code)]

// Links the runtime, and with it every `#[no_mangle]` function of its C API, into the
// libraries this crate produces.
pub use polyplug_runtime;
