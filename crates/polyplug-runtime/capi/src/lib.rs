//! polyplug-runtime's C API, for hosts written in C, C++ or Zig, packaged like a C library:
//! a static library (`libpolyplug_runtime_capi.a`), a shared library
//! (`libpolyplug_runtime_capi.so.0` with that SONAME on Linux, `.dylib` on macOS), the header
//! `include/polyplug_runtime.h` (which includes the plugin ABI header `polyplug.h`) and a
//! pkg-config file (`polyplug-runtime-capi.pc`, see the README for the install layout).
//!
//! The `polyplug_runtime_*` functions are defined here, not in `polyplug-runtime`: the Rust
//! library exports no C symbol, so a binary can hold it (even two versions of it) beside this
//! crate without symbol clashes. A Rust program may link this crate (it is an `rlib` too) to
//! hand a runtime to C code.
//!
//! ```sh
//! cargo build --release -p polyplug-runtime-capi
//! cc $(pkg-config --cflags polyplug-runtime-capi) host.c \
//!     $(pkg-config --libs polyplug-runtime-capi) -o host
//! ```

#![deny(unsafe_code)]

pub use polyplug_runtime;

// Every `unsafe` operation of the C boundary lives in this module.
#[allow(unsafe_code)]
pub mod sys;
