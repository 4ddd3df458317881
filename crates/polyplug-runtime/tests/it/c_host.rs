//! A C host drives the runtime through the C API.
//!
//! `fixtures/c-host/host.c` is compiled into a shared object whose `polyplug_runtime_*`
//! references stay undefined; this test binary exports those symbols (the crate's build
//! script asks the linker to put them in its dynamic symbol table), so `dlopen` of the host
//! resolves them against the runtime linked into this process — what a C application linking
//! the runtime sees. The host loads the C plugin, calls it, hot-reloads it, checks error codes
//! and messages, and unloads it.

use std::ffi::{CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;

use crate::fixtures::{capi_libraries, compile_c, crate_dir, fixtures};

type HostRun = unsafe extern "C" fn(*const c_char, *const c_char, *mut c_char, usize) -> c_int;

#[test]
fn a_c_host_loads_calls_reloads_and_unloads_through_the_c_api() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-hosted");
    let lib = f.root.join("c").join("libc-host.so");
    let mut flags = vec![];
    if cfg!(target_os = "macos") {
        flags.push("-Wl,-undefined,dynamic_lookup");
    }
    compile_c(
        &crate_dir().join("fixtures/c-host/host.c"),
        &lib,
        &flags,
        true,
    )
    .expect("compile");

    let path = CString::new(lib.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path; the host library has no constructors.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror takes no arguments; after a failed dlopen it returns its message.
        let error = unsafe { libc::dlerror() };
        // SAFETY: non-null (dlopen just failed on this thread) and NUL-terminated.
        let message = unsafe { std::ffi::CStr::from_ptr(error) };
        panic!("dlopen of the C host failed (is the C API exported?): {message:?}");
    }
    // SAFETY: the handle is open and the name NUL-terminated.
    let run = unsafe { libc::dlsym(handle, c"polyplug_c_host_run".as_ptr()) };
    assert!(!run.is_null(), "polyplug_c_host_run not exported");
    // SAFETY: host.c defines polyplug_c_host_run with exactly this signature.
    let run: HostRun = unsafe { std::mem::transmute::<*mut libc::c_void, HostRun>(run) };
    let (v1, v2) = (
        CString::new(v1.as_os_str().as_bytes()).expect("v1"),
        CString::new(v2.as_os_str().as_bytes()).expect("v2"),
    );
    let mut log = vec![0u8; 512];
    // SAFETY: valid NUL-terminated directories and a writable log buffer of its length.
    let line = unsafe { run(v1.as_ptr(), v2.as_ptr(), log.as_mut_ptr().cast(), log.len()) };
    let text =
        String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
    assert_eq!(line, 0, "host.c:{line}: {text}");
    assert_eq!(text, "ok");
    // SAFETY: the handle is open; nothing from the host library is used afterwards.
    assert_eq!(unsafe { libc::dlclose(handle) }, 0);
}

/// The function names `include/polyplug.h` declares.
fn declared_functions() -> Vec<String> {
    let header = std::fs::read_to_string(crate_dir().join("include/polyplug.h")).expect("header");
    let mut names: Vec<String> = header
        .match_indices("polyplug_runtime_")
        .filter_map(|(at, _)| {
            let rest = &header[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            // A declaration: the name is followed by its parameter list.
            rest[end..].starts_with('(').then(|| rest[..end].to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn a_c_program_linked_with_the_static_library_drives_the_runtime() {
    let f = fixtures();
    let (static_lib, _) = capi_libraries().expect("build polyplug-runtime-capi");
    let (v1, v2) = f.c_pair("c-hosted");
    let app = f
        .root
        .join("c")
        .join(format!("c-app-{}", std::process::id()));
    let host = crate_dir().join("fixtures/c-host");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut link = std::process::Command::new(&cc);
    link.args(["-std=c11", "-Wall", "-Wextra", "-I"])
        .arg(crate_dir().join("include"))
        .arg(host.join("main.c"))
        .arg(host.join("host.c"))
        .arg(static_lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&app);
    let linked = link.output().expect("run the C compiler");
    assert!(
        linked.status.success(),
        "{cc} failed to link the static library:\n{}",
        String::from_utf8_lossy(&linked.stderr)
    );
    let run = std::process::Command::new(&app)
        .arg(&v1)
        .arg(&v2)
        .output()
        .expect("run the C program");
    let _ = std::fs::remove_file(&app);
    assert!(
        run.status.success(),
        "the C program failed ({:?}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "ok\n");
}

#[test]
fn the_shared_library_exports_every_function_the_header_declares() {
    let (_, shared) = capi_libraries().expect("build polyplug-runtime-capi");
    let names = declared_functions();
    assert!(names.len() >= 10, "header parse found only {names:?}");
    let path = CString::new(shared.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path to a library this workspace built; its initialisers are
    // Rust's standard library's.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {}", shared.display());
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            let symbol = CString::new(name.as_str()).expect("symbol");
            // SAFETY: the handle is open and the name NUL-terminated.
            unsafe { libc::dlsym(handle, symbol.as_ptr()) }.is_null()
        })
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    // SAFETY: the handle is open and nothing from the library is in use.
    assert_eq!(unsafe { libc::dlclose(handle) }, 0);
}
