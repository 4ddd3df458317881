/*
 * polyplug.h — the C ABI of polyplug-runtime.
 *
 * Guests (plugins) export:
 *
 *     POLYPLUG_EXPORT const uint32_t polyplug_abi_version = POLYPLUG_ABI_VERSION;
 *     POLYPLUG_EXPORT int32_t polyplug_init(const PolyplugHostApi *host,
 *                                           const PolyplugBundleInitContext *context);
 *     POLYPLUG_EXPORT void polyplug_fini(void);            (optional)
 *     POLYPLUG_EXPORT size_t polyplug_state_export(uint8_t *buffer, size_t capacity);  (optional)
 *     POLYPLUG_EXPORT int32_t polyplug_state_import(const uint8_t *state, size_t len);  (optional)
 *
 * State hand-off on reload: when the live version exports polyplug_state_export and the new one
 * polyplug_state_import, the host asks the old version for its state (first with a NULL buffer:
 * the return value is the length; then with a buffer of that length), and hands it to the new
 * version after its polyplug_init and before it serves a call. A non-zero status from the import
 * refuses the reload: it fails (ReloadError::StateRefused) and the old version keeps serving.
 *
 * The host reads polyplug_abi_version before running any polyplug entry point; polyplug_init
 * registers each provided contract with host->register_contract (only during the call). The
 * host copies descriptors and interfaces; dispatch tables must stay valid while the library
 * is loaded (make them static const).
 *
 * Hosts written in C drive the runtime through the polyplug_runtime_* functions of
 * polyplug_runtime.h, which the polyplug-runtime-capi crate ships with its libraries.
 *
 * A plugin ships as a bundle directory: its library and a manifest.toml (unknown keys are errors):
 *
 *     name = "greeter"                       # the bundle name: [A-Za-z0-9._-], 1 to 128 bytes
 *     version = "1.4.0"                      # major.minor.patch (BundleInitContext.bundle_version)
 *     provides = ["greeter@1.4", "stats@2.0"] # every contract polyplug_init registers: name@major.minor
 *     depends = ["base-services"]            # bundles that must be loaded first
 *     requires = ["clock@1.2"]               # contracts another bundle (or the host) must provide
 *     reload_with_dependencies = true        # reload me after a dependency reloads
 *
 *     [library]                              # relative to the bundle directory
 *     linux = "libgreeter.so"
 *     macos = "libgreeter.dylib"
 *
 * Every layout here mirrors a #[repr(C)] type of the crate's `abi` module; the crate's tests
 * compile static assertions of every size and offset against this header.
 */
#ifndef POLYPLUG_H
#define POLYPLUG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define POLYPLUG_ABI_VERSION 2u
#define POLYPLUG_DISPATCH_FUNCTION_TABLE 0u

#if defined(__GNUC__) || defined(__clang__)
#define POLYPLUG_EXPORT __attribute__((visibility("default")))
#else
#define POLYPLUG_EXPORT
#endif

/* Status codes: 0 is success, failures are negative. */
#define POLYPLUG_OK 0
#define POLYPLUG_ERR_INVALID_ARGUMENT (-1)
#define POLYPLUG_ERR_NOT_FOUND (-2)
#define POLYPLUG_ERR_STALE_HANDLE (-3)
#define POLYPLUG_ERR_LOAD_FAILED (-4)
#define POLYPLUG_ERR_RELOAD_IN_PROGRESS (-5)
#define POLYPLUG_ERR_DEPENDENCY_IN_USE (-6)
#define POLYPLUG_ERR_PANICKED (-7)
#define POLYPLUG_ERR_DUPLICATE_PROVIDER (-8)
#define POLYPLUG_ERR_ID_COLLISION (-9)
#define POLYPLUG_ERR_NON_UTF8 (-10)
#define POLYPLUG_ERR_ID_MISMATCH (-11)
#define POLYPLUG_ERR_NOT_IN_INIT (-12)
#define POLYPLUG_ERR_AMBIGUOUS (-13)
#define POLYPLUG_ERR_INCOMPATIBLE_VERSION (-14)
#define POLYPLUG_ERR_RELOAD_FAILED (-15)
#define POLYPLUG_ERR_HOT_RELOAD_DISABLED (-16)
#define POLYPLUG_ERR_UNDECLARED (-17)
#define POLYPLUG_ERR_INTERNAL (-99)

/* Log levels. */
#define POLYPLUG_LOG_ERROR 1u
#define POLYPLUG_LOG_WARN 2u
#define POLYPLUG_LOG_INFO 3u
#define POLYPLUG_LOG_DEBUG 4u

typedef struct PolyplugVersion {
    uint32_t major;
    uint32_t minor;
    uint32_t patch;
} PolyplugVersion;

/* A byte string: pointer and length, not NUL-terminated. Names are UTF-8. */
typedef struct PolyplugStringView {
    const uint8_t *ptr;
    size_t len;
} PolyplugStringView;

typedef void (*PolyplugFn)(void);

typedef struct PolyplugDispatchTable {
    size_t function_count;
    const PolyplugFn *functions;
} PolyplugDispatchTable;

typedef struct PolyplugGuestContractInterface {
    uint64_t contract_id; /* polyplug_contract_id(name, major) */
    PolyplugVersion contract_version;
    uint32_t dispatch_type; /* POLYPLUG_DISPATCH_FUNCTION_TABLE */
    void *(*create_instance)(void);
    void (*destroy_instance)(void *instance);
    PolyplugDispatchTable dispatch;
    /* The functions' canonical signature text (POLYPLUG_DEFINE_CONTRACT's <Type>_signature()),
     * or {NULL, 0} for none. The host refuses a version whose signatures differ from the ones
     * it serves for the same contract and major. */
    PolyplugStringView signature;
} PolyplugGuestContractInterface;

typedef struct PolyplugGuestContractHandle {
    uint32_t index;
    uint32_t generation; /* the null handle is {UINT32_MAX, 0} */
} PolyplugGuestContractHandle;

typedef struct PolyplugPluginDescriptor {
    PolyplugStringView name;
    PolyplugStringView contract_name;
    PolyplugVersion version;
} PolyplugPluginDescriptor;

typedef enum PolyplugReloadPhaseType {
    POLYPLUG_RELOAD_PREPARING = 0,
    POLYPLUG_RELOAD_RELOADED = 1,
    POLYPLUG_RELOAD_FAILED = 2,
    POLYPLUG_RELOAD_UNLOADING = 3
} PolyplugReloadPhaseType;

typedef struct PolyplugReloadPhase {
    uint32_t phase_type; /* a PolyplugReloadPhaseType */
    uint64_t bundle_id;
    PolyplugStringView bundle_name; /* valid during the callback */
    PolyplugStringView reason;      /* valid during the callback */
} PolyplugReloadPhase;

/* A counted reference to one interface version: valid (and its library loaded) until
 * released, whatever reloads or unloads happen meanwhile. */
typedef struct PolyplugInterfaceRef PolyplugInterfaceRef;

/* The runtime's lookups for guests: find another plugin's contract, or a service the host
 * published, and call it through a counted reference. Unlike the rest of PolyplugHostApi these
 * stay valid while the library is loaded: copy the structure during polyplug_init. All are
 * thread-safe and lock-free; status codes as above. */
typedef struct PolyplugHostServices {
    void *context; /* pass to find and acquire */
    int32_t (*find)(void *context, PolyplugStringView contract, uint32_t major,
                    uint32_t min_minor, PolyplugGuestContractHandle *out_handle);
    int32_t (*acquire)(void *context, PolyplugGuestContractHandle handle,
                       PolyplugInterfaceRef **out_ref);
    const PolyplugGuestContractInterface *(*interface)(const PolyplugInterfaceRef *ref);
    void (*release)(PolyplugInterfaceRef *ref);
} PolyplugHostServices;

typedef struct PolyplugHostApi {
    uint32_t abi_version;
    uint32_t struct_size;
    void *host_context;
    int32_t (*register_contract)(void *host_context, const PolyplugPluginDescriptor *descriptor,
                                 const PolyplugGuestContractInterface *iface);
    void (*log)(void *host_context, uint32_t level, PolyplugStringView message);
    PolyplugHostServices services; /* valid after polyplug_init returns (copy it) */
} PolyplugHostApi;

typedef struct PolyplugBundleInitContext {
    uint64_t bundle_id;
    PolyplugStringView bundle_name;
    PolyplugStringView bundle_dir;
    PolyplugVersion bundle_version;
    uint32_t is_reload; /* 1 during a hot reload */
} PolyplugBundleInitContext;

/* FNV-1a-64, the hash behind contract and bundle ids. */
static inline uint64_t polyplug_fnv1a64_extend(uint64_t hash, const char *bytes, size_t len) {
    for (size_t i = 0; i < len; i++) {
        hash ^= (uint8_t)bytes[i];
        hash *= 0x00000100000001b3ull;
    }
    return hash;
}

/* The id of contract `name` at `major`: FNV-1a-64 of "guest_contract:<name>@<major>". */
static inline uint64_t polyplug_contract_id(const char *name, uint32_t major) {
    static const char prefix[] = "guest_contract:";
    char digits[10];
    size_t n = 0, name_len = 0;
    uint64_t hash = 0xcbf29ce484222325ull;
    while (name[name_len] != '\0') name_len++;
    hash = polyplug_fnv1a64_extend(hash, prefix, sizeof prefix - 1);
    hash = polyplug_fnv1a64_extend(hash, name, name_len);
    hash = polyplug_fnv1a64_extend(hash, "@", 1);
    do {
        digits[n++] = (char)('0' + major % 10u);
        major /= 10u;
    } while (major != 0u);
    while (n > 0) {
        n--;
        hash = polyplug_fnv1a64_extend(hash, &digits[n], 1);
    }
    return hash;
}

/* ─── Contracts: one definition gives the table type and its signature ─────────────────── *
 *
 * List a contract's functions once, in table order, as X(return type, name, argument types…)
 * (`void` for no arguments; spell byte pointers uint8_t * or int8_t *, never char *, and put
 * qualifiers first: const uint8_t *):
 *
 *     #define CALC_FUNCTIONS(X)                  \
 *         X(uint32_t, add, uint32_t, uint32_t)   \
 *         X(uint32_t, version, void)
 *     POLYPLUG_DEFINE_CONTRACT(Calc, CALC_FUNCTIONS)
 *
 * defines
 *
 *     typedef struct Calc { uint32_t (*add)(uint32_t, uint32_t); uint32_t (*version)(void); } Calc;
 *     Calc_FUNCTION_COUNT                           (2)
 *     PolyplugStringView Calc_signature(void)       ("add(uint32_t, uint32_t)->uint32_t;version(void)->uint32_t;")
 *     uint64_t Calc_fingerprint(void)               (polyplug_signature_fingerprint of that text)
 *
 * A guest fills a static const Calc, points its interface's dispatch at it with
 * POLYPLUG_TABLE(Calc, table) and sets signature = Calc_signature(). The Rust macro
 * polyplug_runtime::contract! renders the same text from the same list written in Rust, so a
 * C and a Rust provider of one contract carry equal fingerprints. */
#define POLYPLUG_CONTRACT_FIELD_(ret, name, ...) ret (*name)(__VA_ARGS__);
#define POLYPLUG_CONTRACT_TEXT_(ret, name, ...) #name "(" #__VA_ARGS__ ")->" #ret ";"
#define POLYPLUG_DEFINE_CONTRACT(type, FUNCTIONS)                                            \
    typedef struct type {                                                                    \
        FUNCTIONS(POLYPLUG_CONTRACT_FIELD_)                                                  \
    } type;                                                                                  \
    enum { type##_FUNCTION_COUNT = sizeof(type) / sizeof(PolyplugFn) };                      \
    static inline PolyplugStringView type##_signature(void) {                                \
        static const char text[] = FUNCTIONS(POLYPLUG_CONTRACT_TEXT_);                       \
        PolyplugStringView view = {(const uint8_t *)text, sizeof text - 1};                  \
        return view;                                                                         \
    }                                                                                        \
    static inline uint64_t type##_fingerprint(void) {                                        \
        PolyplugStringView text = type##_signature();                                        \
        return polyplug_signature_fingerprint((const char *)text.ptr, text.len);             \
    }
/* The dispatch table of a static table struct defined with POLYPLUG_DEFINE_CONTRACT. */
#define POLYPLUG_TABLE(type, table) \
    ((PolyplugDispatchTable){type##_FUNCTION_COUNT, (const PolyplugFn *)(const void *)&(table)})

/* The fingerprint of a signature text: FNV-1a-64 of its bytes, whitespace skipped. */
static inline uint64_t polyplug_signature_fingerprint(const char *text, size_t len) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f') continue;
        hash ^= (uint8_t)c;
        hash *= 0x00000100000001b3ull;
    }
    return hash;
}

/* The id of bundle `name`. */
static inline uint64_t polyplug_bundle_id(const char *name) {
    size_t len = 0;
    while (name[len] != '\0') len++;
    return polyplug_fnv1a64_extend(0xcbf29ce484222325ull, name, len);
}

#ifdef __cplusplus
}
#endif

#endif /* POLYPLUG_H */
