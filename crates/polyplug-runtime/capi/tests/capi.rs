//! The C API as C hosts use it, on the real libraries this crate builds: a C host
//! (`fixtures/c-host/host.c` in polyplug-runtime) linked against the shared library, a C
//! program linked with the static library, and one built from the pkg-config file; the shared
//! library's SONAME and exports; a host service published through the C API; and this crate
//! and polyplug-runtime linked into one Rust binary.
//!
//! The host loads the C plugin, calls it, hot-reloads it, checks error codes, messages,
//! reports and listings, and unloads it.

#[path = "../../tests/support/fixtures.rs"]
mod fixtures;

use std::ffi::{CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fixtures::{BundleSpec, capi_libraries, compile_c, crate_dir, fixtures};
use workspace_tests::support::{have, skip};

type HostRun = unsafe extern "C" fn(*const c_char, *const c_char, *mut c_char, usize) -> c_int;

#[test]
fn a_c_host_loads_calls_reloads_and_unloads_through_the_c_api() {
    let f = fixtures();
    let (v1, v2) = f.c_pair("c-hosted");
    let (_, shared) = capi_libraries().expect("build polyplug-runtime-capi");
    let dir = shared.parent().expect("library directory");
    let lib = f
        .root
        .join("c")
        .join(format!("libc-host-{}.so", std::process::id()));
    let search = format!("-L{}", dir.display());
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    compile_c(
        &crate_dir().join("fixtures/c-host/host.c"),
        &lib,
        &[&search, "-lpolyplug_runtime_capi", &rpath],
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
    let _ = std::fs::remove_file(&lib);
}

/// The function names `include/polyplug_runtime.h` declares.
fn declared_functions() -> Vec<String> {
    let header = std::fs::read_to_string(crate_dir().join("capi/include/polyplug_runtime.h"))
        .expect("header");
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
        .arg("-I")
        .arg(crate_dir().join("capi/include"))
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

/// Installs the built libraries, both headers and the pkg-config file under `prefix` with the
/// crate's own `install.sh`, as a packager would (the shared library under its SONAME, with the
/// development symlink; the static library stripped of debug info).
fn install(prefix: &Path) {
    let (static_lib, _) = capi_libraries().expect("build polyplug-runtime-capi");
    let build = static_lib.parent().expect("build directory");
    let script = crate_dir().join("capi/install.sh");
    let out = run(
        "sh",
        &[
            &script.display().to_string(),
            &prefix.display().to_string(),
            &build.display().to_string(),
        ],
        &[],
    )
    .expect("install.sh");
    assert!(
        out.contains(concat!("polyplug-runtime-capi ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

/// Runs `program` with `args`; its stdout if it succeeds.
fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Result<String, String> {
    let mut command = std::process::Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} failed ({:?}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[test]
fn a_c_program_builds_with_pkg_config_and_runs_against_the_shared_library() {
    let test = "a_c_program_builds_with_pkg_config_and_runs_against_the_shared_library";
    if !cfg!(target_os = "linux") {
        return skip(
            test,
            "the install layout under test (SONAME .so.0) is Linux's",
        );
    }
    if !have(test, &["pkg-config"]) {
        return;
    }
    let f = fixtures();
    let prefix = f.scratch("capi-prefix");
    install(&prefix);
    let pkgconfig = prefix.join("lib/pkgconfig");
    let env = [("PKG_CONFIG_PATH", pkgconfig.as_path())];
    let cflags = run("pkg-config", &["--cflags", "polyplug-runtime-capi"], &env).expect("cflags");
    let libs = run("pkg-config", &["--libs", "polyplug-runtime-capi"], &env).expect("libs");
    assert!(libs.contains("-lpolyplug_runtime_capi"), "{libs}");
    let app = prefix.join("c-app");
    let host = crate_dir().join("fixtures/c-host");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut args: Vec<String> = vec!["-std=c11".into(), "-Wall".into(), "-Wextra".into()];
    args.extend(cflags.split_whitespace().map(str::to_owned));
    args.push(host.join("main.c").display().to_string());
    args.push(host.join("host.c").display().to_string());
    args.extend(libs.split_whitespace().map(str::to_owned));
    args.extend(["-o".to_owned(), app.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&cc, &args, &[]).expect("compile and link with pkg-config's flags");

    // Only the SONAME file and the development symlink are installed; the program finds the
    // library by the name its SONAME recorded.
    let needed = run("readelf", &["-d", &app.display().to_string()], &[]);
    match &needed {
        Ok(dynamic) => assert!(
            dynamic.contains("[libpolyplug_runtime_capi.so.0]"),
            "the program records the SONAME:\n{dynamic}"
        ),
        Err(_) => skip(
            test,
            "readelf is not installed: the recorded SONAME is not checked",
        ),
    }
    // What ships carries no debug information (the static library's members include Rust's
    // standard library, which is built with it).
    let installed_static = prefix.join("lib/libpolyplug_runtime_capi.a");
    match run(
        "readelf",
        &["-S", "-W", &installed_static.display().to_string()],
        &[],
    ) {
        Ok(sections) => assert!(
            !sections.contains(".debug_info"),
            "the installed static library carries debug info ({} bytes)",
            std::fs::metadata(&installed_static).map_or(0, |m| m.len())
        ),
        Err(_) => println!("skip: readelf is not installed; not checking debug sections"),
    }
    let (v1, v2) = f.c_pair("c-hosted");
    let lib = prefix.join("lib");
    let out = run(
        &app.display().to_string(),
        &[&v1.display().to_string(), &v2.display().to_string()],
        &[("LD_LIBRARY_PATH", lib.as_path())],
    )
    .expect("the C program runs");
    assert_eq!(out, "ok\n");
}

#[test]
fn the_shared_library_has_a_soname() {
    let test = "the_shared_library_has_a_soname";
    if !cfg!(target_os = "linux") {
        return skip(test, "SONAMEs are an ELF feature");
    }
    let (_, shared) = capi_libraries().expect("build polyplug-runtime-capi");
    match run("readelf", &["-d", &shared.display().to_string()], &[]) {
        Ok(dynamic) => assert!(
            dynamic.contains("Library soname: [libpolyplug_runtime_capi.so.0]"),
            "{dynamic}"
        ),
        Err(e) => skip(test, &format!("readelf is not available ({e})")),
    }
}

polyplug_runtime::contract! {
    /// `host.math@1`.
    struct HostMath {
        fn mix(a: u32, b: u32) -> u32;
    }
}

polyplug_runtime::contract! {
    /// `c.relay@1`.
    struct Relay {
        fn via_host(a: u32, b: u32) -> u32;
        fn via_peer(a: u32, b: u32) -> u32;
    }
}

extern "C" fn mix(a: u32, b: u32) -> u32 {
    a.wrapping_mul(1000).wrapping_add(b)
}

static HOST_MATH: HostMath = HostMath { mix };

/// This crate and polyplug-runtime in one Rust binary (this test): a runtime made by the C
/// API is driven both through the C functions and through the Rust API, and a host service
/// published through the C API is what a C plugin calls.
#[test]
fn the_c_api_and_the_rust_crate_share_one_binary_and_one_runtime() {
    use polyplug_runtime::abi::{DispatchTable, FunctionTable, GuestContractHandle, StringView};
    use polyplug_runtime::abi::{Version, status};
    use polyplug_runtime::ids::ContractRef;
    use polyplug_runtime_capi::sys as capi;

    let f = fixtures();
    // SAFETY: null options: the defaults.
    let runtime = unsafe { capi::polyplug_runtime_new(std::ptr::null()) };
    assert!(!runtime.is_null());
    let table = DispatchTable::from_static(&HOST_MATH);
    let mut handle = GuestContractHandle::NULL;
    // SAFETY: a live runtime, a NUL-terminated name, a static table of one function, its
    // static signature text and a writable handle.
    let code = unsafe {
        capi::polyplug_runtime_publish_service(
            runtime,
            c"host.math".as_ptr(),
            Version::new(1, 0, 0),
            table.functions,
            table.function_count,
            StringView::from_static(HostMath::SIGNATURE_TEXT.as_bytes()),
            &mut handle,
        )
    };
    assert_eq!(code, status::OK);
    let relay_dir = f.bundle(
        &BundleSpec::new("capi-relay", "1.0.0", f.c("relay"), &["c.relay@1.0"])
            .requires("host.math@1.0"),
    );
    let dir = CString::new(relay_dir.as_os_str().as_bytes()).expect("dir");
    // SAFETY: a live runtime and a NUL-terminated directory.
    let code = unsafe { capi::polyplug_runtime_load_bundle(runtime, dir.as_ptr()) };
    assert_eq!(code, status::OK);
    {
        // SAFETY: the runtime is live until freed below, and no C call uses it meanwhile.
        let rt = unsafe { &*runtime };
        let guard = rt.find(&ContractRef::new("c.relay", 1, 0)).expect("relay");
        let relay = guard.functions::<Relay>().expect("relay table");
        assert_eq!(
            (relay.via_host)(3, 4),
            3004,
            "the C plugin calls the C host's service"
        );
        assert_eq!(rt.bundles().len(), 1);
    }
    // The service is withdrawn only once no loaded bundle requires it.
    // SAFETY: a live runtime.
    let code = unsafe { capi::polyplug_runtime_withdraw_service(runtime, handle) };
    assert_eq!(
        code,
        status::DEPENDENCY_IN_USE,
        "the relay requires host.math"
    );
    // SAFETY: a live runtime and a NUL-terminated bundle name.
    let code = unsafe { capi::polyplug_runtime_unload_bundle(runtime, c"capi-relay".as_ptr()) };
    assert_eq!(code, status::OK);
    // SAFETY: a live runtime.
    let code = unsafe { capi::polyplug_runtime_withdraw_service(runtime, handle) };
    assert_eq!(code, status::OK);
    {
        // SAFETY: as above.
        let rt = unsafe { &*runtime };
        assert!(rt.find(&ContractRef::new("host.math", 1, 0)).is_err());
    }
    // SAFETY: a live runtime.
    let code = unsafe { capi::polyplug_runtime_withdraw_service(runtime, handle) };
    assert_eq!(code, status::STALE_HANDLE);
    // SAFETY: from polyplug_runtime_new, freed once, nothing uses it afterwards.
    unsafe { capi::polyplug_runtime_free(runtime) };
}

/// The C API's report structures have the layouts `polyplug_runtime.h` declares (checked by a
/// C program printing them, against the Rust definitions).
#[test]
fn the_report_structures_match_the_header() {
    use std::mem::{offset_of, size_of};

    use polyplug_runtime_capi::sys::{ReloadReportAbi, UnloadReportAbi};

    let f = fixtures();
    let dir = f.scratch("capi-layout");
    let source = dir.join("layout.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <stddef.h>\n#include \"polyplug_runtime.h\"\n\
         int main(void) {\n\
           printf(\"%zu %zu %zu %zu %zu %zu\\n\", sizeof(PolyplugReloadReport),\n\
             offsetof(PolyplugReloadReport, old_image), offsetof(PolyplugReloadReport, total_ns),\n\
             sizeof(PolyplugUnloadReport), offsetof(PolyplugUnloadReport, image),\n\
             offsetof(PolyplugUnloadReport, drain_ns));\n\
           return 0;\n}\n",
    )
    .expect("write");
    let exe = dir.join("layout");
    compile_c(&source, &exe, &[], false).expect("compile");
    let out = run(&exe.display().to_string(), &[], &[]).expect("run");
    let expected = format!(
        "{} {} {} {} {} {}\n",
        size_of::<ReloadReportAbi>(),
        offset_of!(ReloadReportAbi, old_image),
        offset_of!(ReloadReportAbi, total_ns),
        size_of::<UnloadReportAbi>(),
        offset_of!(UnloadReportAbi, image),
        offset_of!(UnloadReportAbi, drain_ns),
    );
    assert_eq!(out, expected);
}

/// `copy_dir` in the options: the runtime puts its per-version library copies there.
#[test]
fn the_copy_directory_is_a_c_api_setting() {
    use polyplug_runtime::abi::{RuntimeOptions, status};
    use polyplug_runtime_capi::sys as capi;

    let f = fixtures();
    let copies = f.scratch("capi-copies");
    let copies_c = CString::new(copies.as_os_str().as_bytes()).expect("dir");
    let options = RuntimeOptions {
        struct_size: std::mem::size_of::<RuntimeOptions>() as u32,
        hot_reload: 0,
        provider_policy: 0,
        drain_timeout_ms: 0,
        on_reload: None,
        reload_user_data: std::ptr::null_mut(),
        on_log: None,
        log_user_data: std::ptr::null_mut(),
        copy_dir: copies_c.as_ptr(),
    };
    // SAFETY: valid options for the call.
    let runtime = unsafe { capi::polyplug_runtime_new(&options) };
    assert!(!runtime.is_null());
    let (v1, _) = f.c_pair("capi-copied");
    let dir = CString::new(v1.as_os_str().as_bytes()).expect("bundle");
    // SAFETY: a live runtime and a NUL-terminated directory.
    let code = unsafe { capi::polyplug_runtime_load_bundle(runtime, dir.as_ptr()) };
    assert_eq!(code, status::OK);
    let copied: Vec<_> = std::fs::read_dir(&copies)
        .expect("copies")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        copied.iter().any(|name| name.starts_with("capi-copied.")),
        "{copied:?}"
    );
    // SAFETY: from polyplug_runtime_new, freed once.
    unsafe { capi::polyplug_runtime_free(runtime) };
}
