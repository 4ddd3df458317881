/*
 * polyplug_runtime.h — the C API of polyplug-runtime, for hosts written in C, C++ or Zig.
 *
 * Shipped by the polyplug-runtime-capi crate with its libraries (libpolyplug_runtime_capi.a,
 * libpolyplug_runtime_capi.so.0) and its pkg-config file (polyplug-runtime-capi.pc):
 *
 *     cc $(pkg-config --cflags polyplug-runtime-capi) host.c \
 *         $(pkg-config --libs polyplug-runtime-capi) -o host
 *
 * Every function returns a status code (POLYPLUG_OK or a negative POLYPLUG_ERR_*) or a
 * pointer that is NULL on failure; the failure's message is kept per thread
 * (polyplug_runtime_last_error). The plugin ABI (types, status codes, contracts) is
 * polyplug.h, included here.
 *
 * A bundle is a directory with a manifest.toml and the plugin's library:
 *
 *     name = "greeter"                       # the bundle name
 *     version = "1.4.0"
 *     provides = ["greeter@1.4", "stats@2.0"] # contracts it registers: name@major.minor
 *     depends = ["base-services"]            # bundles that must be loaded first
 *     requires = ["clock@1.2"]               # contracts other bundles (or the host) provide
 *     reload_with_dependencies = true        # reload me after a dependency reloads
 *
 *     [library]
 *     linux = "libgreeter.so"
 *     macos = "libgreeter.dylib"
 */
#ifndef POLYPLUG_RUNTIME_H
#define POLYPLUG_RUNTIME_H

#include "polyplug.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ─── The host C API ──────────────────────────────────────────────────────────────────── */

typedef struct PolyplugRuntime PolyplugRuntime;

/* Callbacks may be called from any thread that reloads or loads. */
typedef void (*PolyplugReloadCallback)(void *user_data, PolyplugReloadPhase phase);
typedef void (*PolyplugLogCallback)(void *user_data, uint32_t level, PolyplugStringView bundle,
                                    PolyplugStringView message);

typedef struct PolyplugRuntimeOptions {
    uint32_t struct_size;
    uint32_t hot_reload;       /* non-zero enables hot reload */
    uint32_t provider_policy;  /* 0 unique, 1 first loaded, 2 highest version */
    uint32_t drain_timeout_ms; /* 0: default (100 ms) */
    PolyplugReloadCallback on_reload;
    void *reload_user_data;
    PolyplugLogCallback on_log;
    void *log_user_data;
    const char *copy_dir; /* per-version library copies go here; NULL: a private temp dir */
} PolyplugRuntimeOptions;

/* What became of an old library image (PolyplugReloadReport.old_image, PolyplugUnloadReport.image). */
#define POLYPLUG_IMAGE_UNMAPPED 0u     /* dlclose ran and the image left the address space */
#define POLYPLUG_IMAGE_STILL_MAPPED 1u /* dlclose ran; the image stays (thread-local destructors) */
#define POLYPLUG_IMAGE_DEFERRED 2u     /* readers still held it; closed when they let go */
#define POLYPLUG_IMAGE_UNKNOWN 3u      /* dlclose ran; the platform cannot tell */

/* A reload's outcome. The caller sets struct_size = sizeof(PolyplugReloadReport). */
typedef struct PolyplugReloadReport {
    uint32_t struct_size;
    PolyplugVersion from;      /* the bundle version before */
    PolyplugVersion to;        /* and after */
    uint32_t swapped;          /* contracts swapped in place (handles stay valid) */
    uint32_t added;            /* contracts new in this version */
    uint32_t retired;          /* contracts dropped (their handles are stale) */
    uint32_t old_image;        /* a POLYPLUG_IMAGE_* */
    uint32_t cascade_failures; /* dependents whose cascade reload failed */
    uint64_t total_ns;         /* the whole reload */
    uint64_t swap_ns;          /* the registry commit (what callers could notice) */
} PolyplugReloadReport;

/* An unload's outcome. The caller sets struct_size = sizeof(PolyplugUnloadReport). */
typedef struct PolyplugUnloadReport {
    uint32_t struct_size;
    uint32_t retired; /* contracts retired */
    uint32_t image;   /* a POLYPLUG_IMAGE_* */
    uint64_t drain_ns;
} PolyplugUnloadReport;

/* NULL options: defaults (hot reload off). Returns NULL on failure. */
PolyplugRuntime *polyplug_runtime_new(const PolyplugRuntimeOptions *options);
void polyplug_runtime_free(PolyplugRuntime *runtime);
int32_t polyplug_runtime_load_bundle(const PolyplugRuntime *runtime, const char *dir);
/* from_dir may be NULL: reload from the bundle's current directory. */
int32_t polyplug_runtime_reload_bundle(const PolyplugRuntime *runtime, const char *bundle,
                                       const char *from_dir);
int32_t polyplug_runtime_try_reload_bundle(const PolyplugRuntime *runtime, const char *bundle,
                                           const char *from_dir);
int32_t polyplug_runtime_unload_bundle(const PolyplugRuntime *runtime, const char *bundle);
/* As polyplug_runtime_reload_bundle (waiting for a reload in progress), filling `report` if it
 * is not NULL and the reload succeeded. */
int32_t polyplug_runtime_reload_bundle_report(const PolyplugRuntime *runtime, const char *bundle,
                                              const char *from_dir, PolyplugReloadReport *report);
/* As polyplug_runtime_unload_bundle, filling `report` if it is not NULL. */
int32_t polyplug_runtime_unload_bundle_report(const PolyplugRuntime *runtime, const char *bundle,
                                              PolyplugUnloadReport *report);
/* The loaded bundles, one "name major.minor.patch\n" line each, sorted by name, copied into
 * `buffer` (NUL-terminated, truncated to `capacity`); returns the full length (without NUL). */
size_t polyplug_runtime_list_bundles(const PolyplugRuntime *runtime, char *buffer,
                                     size_t capacity);
int32_t polyplug_runtime_find(const PolyplugRuntime *runtime, const char *contract,
                              uint32_t major, uint32_t min_minor,
                              PolyplugGuestContractHandle *out_handle);
int32_t polyplug_runtime_acquire(const PolyplugRuntime *runtime,
                                 PolyplugGuestContractHandle handle,
                                 PolyplugInterfaceRef **out_ref);
const PolyplugGuestContractInterface *polyplug_runtime_interface(const PolyplugInterfaceRef *ref);
void polyplug_runtime_release(PolyplugInterfaceRef *ref);
/* Publishes a host service: `count` functions (kept valid while the runtime lives, as is the
 * signature text: a POLYPLUG_DEFINE_CONTRACT <Type>_signature(), or {NULL, 0}) as contract
 * `name` at `version`. Plugins find it through their PolyplugHostServices. out_handle may be
 * NULL. */
int32_t polyplug_runtime_publish_service(const PolyplugRuntime *runtime, const char *name,
                                         PolyplugVersion version, const PolyplugFn *functions,
                                         size_t count, PolyplugStringView signature,
                                         PolyplugGuestContractHandle *out_handle);
/* Withdraws a host service: lookups stop finding it and `handle` turns stale.
 * POLYPLUG_DEPENDENCY_IN_USE while a loaded bundle requires it (it stays published),
 * POLYPLUG_INVALID_ARGUMENT for a plugin's contract, POLYPLUG_STALE_HANDLE for a handle to
 * nothing live. */
int32_t polyplug_runtime_withdraw_service(const PolyplugRuntime *runtime,
                                          PolyplugGuestContractHandle handle);
/* Copies this thread's last error (NUL-terminated, truncated) and returns its full length. */
size_t polyplug_runtime_last_error(char *buffer, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* POLYPLUG_RUNTIME_H */
