//! The fixture plugins' contracts as the host sees them: function tables and contract
//! references (what a host would write from the contracts' headers). Included with `#[path]`
//! by the tests, the bench and the demo.

#![allow(dead_code)]

use std::ffi::c_char;

use polyplug_runtime::abi::FunctionTable;
use polyplug_runtime::ids::ContractRef;

/// `reload.test@1`, provided by the Rust plugin.
pub(crate) const RELOAD_TEST: ContractRef<'static> = ContractRef::new("reload.test", 1, 0);
/// `shared.math@1`, provided by both plugins (C at minor 0, Rust at 1 or 2).
pub(crate) const SHARED_MATH: ContractRef<'static> = ContractRef::new("shared.math", 1, 0);
/// `c.greeter@1`, provided by the C plugin (minor 0 in v1, 1 in v2).
pub(crate) const GREETER: ContractRef<'static> = ContractRef::new("c.greeter", 1, 0);
/// `c.extra@1`, C plugin v2 only.
pub(crate) const EXTRA: ContractRef<'static> = ContractRef::new("c.extra", 1, 0);
/// `rust.v2only@1`, Rust plugin v2 only.
pub(crate) const V2_ONLY: ContractRef<'static> = ContractRef::new("rust.v2only", 1, 0);
/// `c.dependent@1`, the C plugin's dependent role.
pub(crate) const DEPENDENT: ContractRef<'static> = ContractRef::new("c.dependent", 1, 0);

#[repr(C)]
#[derive(Debug)]
pub(crate) struct ReloadTest {
    pub(crate) version: extern "C" fn() -> u32,
    pub(crate) add: extern "C" fn(u32, u32) -> u32,
    pub(crate) explode: extern "C" fn() -> i32,
    pub(crate) touch_tls: extern "C" fn() -> u32,
}
// SAFETY: repr(C), only extern "C" function pointers, in reload.test@1's order and signatures.
unsafe impl FunctionTable for ReloadTest {}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct SharedMath {
    pub(crate) who: extern "C" fn() -> u32,
    pub(crate) add: extern "C" fn(u32, u32) -> u32,
}
// SAFETY: as above, shared.math@1.
unsafe impl FunctionTable for SharedMath {}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Greeter {
    pub(crate) version: extern "C" fn() -> u32,
    pub(crate) add: extern "C" fn(u32, u32) -> u32,
    pub(crate) greet: extern "C" fn(*mut c_char, usize) -> usize,
}
// SAFETY: as above, c.greeter@1.
unsafe impl FunctionTable for Greeter {}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) answer: extern "C" fn() -> u32,
}
// SAFETY: as above, c.extra@1 and rust.v2only@1.
unsafe impl FunctionTable for Answer {}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct Versioned {
    pub(crate) version: extern "C" fn() -> u32,
}
// SAFETY: as above, c.dependent@1 (and a prefix of reload.test@1 and c.greeter@1).
unsafe impl FunctionTable for Versioned {}

/// The greeting of a `c.greeter` table.
pub(crate) fn greeting(table: &Greeter) -> String {
    let mut buf = [0u8; 64];
    let n = (table.greet)(buf.as_mut_ptr().cast(), buf.len());
    String::from_utf8_lossy(&buf[..n.min(buf.len() - 1)]).into_owned()
}
