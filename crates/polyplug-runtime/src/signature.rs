//! Contract signature fingerprints: a 64-bit hash of a contract's function signatures, so a
//! version that changes a function's types under the same major is refused instead of called
//! with the wrong types.
//!
//! # One definition per language, one canonical text
//!
//! A contract's functions are written once per language, and each definition generates both
//! the table type and the fingerprint, so the two cannot disagree:
//!
//! - in C, an X-macro list given to `POLYPLUG_DEFINE_CONTRACT` (in `include/polyplug.h`)
//!   generates the `typedef struct` of function pointers and `<Type>_fingerprint()`;
//! - in Rust, [`contract!`](crate::contract) generates the `#[repr(C)]` table struct, its
//!   [`FunctionTable`](crate::abi::FunctionTable) implementation and
//!   [`FunctionTable::SIGNATURE`](crate::abi::FunctionTable::SIGNATURE).
//!
//! Both hash the same *canonical text*: for each function in table order,
//! `name(arg,arg)->ret;` (`void` for no arguments and for no return value), spelled with C
//! type names and with all whitespace removed, under FNV-1a-64. In C the text is the
//! preprocessor's stringification of the X-macro's arguments; in Rust each type contributes
//! its C name through [`AbiType`] (`u32` is `uint32_t`, `*const u8` is `const uint8_t *`,
//! [`crate::abi::StringView`] is `PolyplugStringView`), and the hash is computed at
//! compile time.
//!
//! Spell byte pointers `uint8_t *` / `int8_t *` in C contracts, not `char *`: Rust's `c_char`
//! is `i8` on some targets and `u8` on others, so `char` has no single Rust spelling. Write
//! qualifiers first (`const uint8_t *`, not `uint8_t const *`).
//!
//! ```
//! use polyplug_runtime::abi::FunctionTable;
//! use polyplug_runtime::signature::fingerprint_text;
//!
//! polyplug_runtime::contract! {
//!     /// `calc@1`.
//!     pub struct Calc {
//!         /// `a + b`.
//!         pub fn add(a: u32, b: u32) -> u32;
//!         /// The plugin version.
//!         pub fn version() -> u32;
//!     }
//! }
//!
//! // What `POLYPLUG_DEFINE_CONTRACT` hashes for
//! //   X(uint32_t, add, uint32_t, uint32_t) X(uint32_t, version, void)
//! let c_text = "add(uint32_t, uint32_t)->uint32_t;version(void)->uint32_t;";
//! assert_eq!(Calc::SIGNATURE, fingerprint_text(c_text));
//! ```

use core::ffi::c_void;

use crate::abi::{GuestContractHandle, StringView, Version};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A type's name in C, as the canonical text spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeName {
    /// A named type: `uint32_t`, `void`, `PolyplugStringView`.
    Plain(&'static str),
    /// `const T *`.
    ConstPtr(&'static TypeName),
    /// `T *`.
    MutPtr(&'static TypeName),
}

/// A Rust type that crosses the C ABI, with its C name.
///
/// Implemented for the fixed-width integers, `f32`/`f64`, `bool`, `usize`/`isize`
/// (`size_t`/`ptrdiff_t`), `()` and `c_void` (`void`), the crate's ABI structs, and pointers to
/// any of them. Implement it for your own `#[repr(C)]` types with the name of their C typedef.
pub trait AbiType {
    /// The C spelling.
    const C_NAME: TypeName;
}

macro_rules! abi_types {
    ($($t:ty => $c:literal),* $(,)?) => {
        $(impl AbiType for $t {
            const C_NAME: TypeName = TypeName::Plain($c);
        })*
    };
}

abi_types! {
    () => "void",
    c_void => "void",
    bool => "bool",
    i8 => "int8_t",
    i16 => "int16_t",
    i32 => "int32_t",
    i64 => "int64_t",
    u8 => "uint8_t",
    u16 => "uint16_t",
    u32 => "uint32_t",
    u64 => "uint64_t",
    usize => "size_t",
    isize => "ptrdiff_t",
    f32 => "float",
    f64 => "double",
    StringView => "PolyplugStringView",
    Version => "PolyplugVersion",
    GuestContractHandle => "PolyplugGuestContractHandle",
}

impl<T: AbiType + ?Sized> AbiType for *const T {
    const C_NAME: TypeName = TypeName::ConstPtr(&T::C_NAME);
}

impl<T: AbiType + ?Sized> AbiType for *mut T {
    const C_NAME: TypeName = TypeName::MutPtr(&T::C_NAME);
}

/// One function of a contract: its name, argument types and return type.
#[derive(Debug, Clone, Copy)]
pub struct FunctionSignature {
    /// The field name.
    pub name: &'static str,
    /// The argument types, in order.
    pub args: &'static [TypeName],
    /// The return type (`void` for none).
    pub ret: TypeName,
}

const fn extend(mut hash: u64, text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !b.is_ascii_whitespace() {
            hash ^= b as u64;
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        i += 1;
    }
    hash
}

/// The fingerprint of a canonical text (whitespace is ignored), as the C header's
/// `polyplug_signature_fingerprint` computes it.
pub const fn fingerprint_text(text: &str) -> u64 {
    extend(FNV_OFFSET, text)
}

/// The fingerprint of every prefix of a canonical text: entry `k` covers functions `0..=k`
/// (so a table with more functions — a later minor — agrees with an older one on the prefix
/// they share). Empty for an empty text; `None` if text remains after the last `;`.
pub fn prefix_fingerprints(text: &str) -> Option<Vec<u64>> {
    let mut hash = FNV_OFFSET;
    let mut prefixes = Vec::new();
    let mut pending = false;
    for &b in text.as_bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        hash ^= b as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        pending = b != b';';
        if b == b';' {
            prefixes.push(hash);
        }
    }
    (!pending).then_some(prefixes)
}

const fn put(buf: &mut [u8], mut at: usize, text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if at < buf.len() {
            buf[at] = bytes[i];
        }
        at += 1;
        i += 1;
    }
    at
}

const fn put_type(buf: &mut [u8], at: usize, name: &TypeName) -> usize {
    match name {
        TypeName::Plain(text) => put(buf, at, text),
        TypeName::ConstPtr(inner) => {
            let at = put(buf, at, "const ");
            let at = put_type(buf, at, inner);
            put(buf, at, " *")
        }
        TypeName::MutPtr(inner) => {
            let at = put_type(buf, at, inner);
            put(buf, at, " *")
        }
    }
}

/// Writes the canonical text of `functions` into `buf` (as far as it fits) and returns its
/// full length.
const fn write_text(buf: &mut [u8], functions: &[FunctionSignature]) -> usize {
    let mut at = 0;
    let mut f = 0;
    while f < functions.len() {
        let function = &functions[f];
        at = put(buf, at, function.name);
        at = put(buf, at, "(");
        if function.args.is_empty() {
            at = put(buf, at, "void");
        }
        let mut a = 0;
        while a < function.args.len() {
            if a > 0 {
                at = put(buf, at, ", ");
            }
            at = put_type(buf, at, &function.args[a]);
            a += 1;
        }
        at = put(buf, at, ")->");
        at = put_type(buf, at, &function.ret);
        at = put(buf, at, ";");
        f += 1;
    }
    at
}

/// The length of the canonical text of `functions` (for [`render`]'s array length).
pub const fn text_len(functions: &[FunctionSignature]) -> usize {
    write_text(&mut [], functions)
}

/// The canonical text of `functions`: `name(arg, arg)->ret;` per function, C type names.
/// `N` must be [`text_len`]`(functions)`.
pub const fn render<const N: usize>(functions: &[FunctionSignature]) -> [u8; N] {
    let mut buf = [0u8; N];
    let len = write_text(&mut buf, functions);
    assert!(len == N, "render::<N> needs N == text_len(functions)");
    buf
}

/// The rendered text as a `str` (it is ASCII and UTF-8 by construction from Rust
/// identifiers and C type names).
pub const fn as_text(bytes: &'static [u8]) -> &'static str {
    match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("a signature text is not UTF-8"),
    }
}

/// The C name of a function's return type: `void` without one.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_ret {
    () => {
        $crate::signature::TypeName::Plain("void")
    };
    ($ret:ty) => {
        <$ret as $crate::signature::AbiType>::C_NAME
    };
}

/// Defines a contract's function table once, generating the `#[repr(C)]` struct of
/// `extern "C"` function pointers, its [`FunctionTable`](crate::abi::FunctionTable)
/// implementation and its signature fingerprint
/// ([`FunctionTable::SIGNATURE`](crate::abi::FunctionTable::SIGNATURE)), the value the C
/// header's `POLYPLUG_DEFINE_CONTRACT` computes for the same functions. See the
/// [module documentation](crate::signature).
///
/// Argument names are documentation only; the fingerprint covers the function names and the
/// types. Every argument and return type must implement
/// [`AbiType`](crate::signature::AbiType). Attributes on a function (doc comments) go to its
/// field only: to vary a table by `cfg`, put the `cfg` on the whole `contract!` invocation.
///
/// ```
/// polyplug_runtime::contract! {
///     /// `counter@1`.
///     #[derive(Debug)]
///     pub struct Counter {
///         /// The next value after `n`.
///         pub fn next(n: u64) -> u64;
///         /// Resets the counter.
///         pub fn reset();
///     }
/// }
///
/// extern "C" fn next(n: u64) -> u64 {
///     n.wrapping_add(1)
/// }
/// extern "C" fn reset() {}
///
/// static TABLE: Counter = Counter { next, reset };
/// assert_eq!((TABLE.next)(41), 42);
/// ```
#[macro_export]
macro_rules! contract {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fattr:meta])*
                $fvis:vis fn $fname:ident ( $($arg:ident : $aty:ty),* $(,)? ) $(-> $ret:ty)? ;
            )*
        }
    ) => {
        $(#[$attr])*
        #[repr(C)]
        $vis struct $name {
            $(
                $(#[$fattr])*
                $fvis $fname: extern "C" fn($($aty),*) $(-> $ret)?,
            )*
        }

        impl $name {
            /// The functions of this contract, in table order, as its signature lists them.
            #[allow(unreachable_pub)]
            pub const FUNCTIONS: &'static [$crate::signature::FunctionSignature] = &[
                $(
                    $crate::signature::FunctionSignature {
                        name: stringify!($fname),
                        args: &[$(<$aty as $crate::signature::AbiType>::C_NAME),*],
                        ret: $crate::__contract_ret!($($ret)?),
                    },
                )*
            ];
        }

        // SAFETY: the struct is #[repr(C)] and every field is a non-nullable `extern "C"`
        // function pointer; its signature text is generated from the same definition, and the
        // host compares its fingerprint with the served table's before handing out this view.
        #[allow(unsafe_code)]
        unsafe impl $crate::abi::FunctionTable for $name {
            const SIGNATURE: u64 = $crate::signature::fingerprint_text(
                <$name as $crate::abi::FunctionTable>::SIGNATURE_TEXT,
            );
            const SIGNATURE_TEXT: &'static str = {
                const LEN: usize = $crate::signature::text_len($name::FUNCTIONS);
                const TEXT: [u8; LEN] = $crate::signature::render::<LEN>($name::FUNCTIONS);
                $crate::signature::as_text(&TEXT)
            };
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::FunctionTable;

    contract! {
        struct Mixed {
            fn greet(buf: *mut u8, len: usize) -> usize;
            fn view(name: StringView) -> *const c_void;
            fn nothing();
        }
    }

    contract! {
        struct Wider {
            fn greet(buf: *mut u8, len: u64) -> usize;
        }
    }

    #[test]
    fn the_rust_definition_renders_and_hashes_the_c_text() {
        assert_eq!(
            Mixed::SIGNATURE_TEXT,
            "greet(uint8_t *, size_t)->size_t;view(PolyplugStringView)->const void *;\
             nothing(void)->void;"
        );
        // What the C header's stringification produces for the same X-macro list.
        let c_text = "greet(uint8_t *,size_t)->size_t;\
                      view(PolyplugStringView)->const void*;\
                      nothing(void)->void;";
        assert_eq!(Mixed::SIGNATURE, fingerprint_text(c_text));
        assert_ne!(Mixed::SIGNATURE, Wider::SIGNATURE);
    }

    #[test]
    fn prefixes_let_a_longer_table_agree_with_a_shorter_one() {
        let prefixes = prefix_fingerprints(Mixed::SIGNATURE_TEXT).expect("well-formed");
        assert_eq!(prefixes.len(), 3);
        assert_eq!(prefixes[2], Mixed::SIGNATURE);
        let first = prefix_fingerprints("greet(uint8_t*, size_t)->size_t;").expect("one");
        assert_eq!(first, vec![prefixes[0]]);
        let wider = prefix_fingerprints(Wider::SIGNATURE_TEXT).expect("one");
        assert_ne!(wider[0], prefixes[0]);
        assert_eq!(prefix_fingerprints(""), Some(Vec::new()));
        assert_eq!(prefix_fingerprints("f(void)->void"), None, "no closing `;`");
    }
}
