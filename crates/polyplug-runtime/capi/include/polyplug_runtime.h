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
} PolyplugRuntimeOptions;

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
/* Copies this thread's last error (NUL-terminated, truncated) and returns its full length. */
size_t polyplug_runtime_last_error(char *buffer, size_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* POLYPLUG_RUNTIME_H */
