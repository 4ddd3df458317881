//! The fixture plugins' contracts as the host sees them: function tables and contract
//! references (what a host would write from the contracts' headers). Included with `#[path]`
//! by the tests, the bench and the demo.

#![allow(dead_code)]

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

polyplug_runtime::contract! {
    /// `reload.test@1`.
    #[derive(Debug)]
    pub(crate) struct ReloadTest {
        pub(crate) fn version() -> u32;
        pub(crate) fn add(a: u32, b: u32) -> u32;
        pub(crate) fn explode() -> i32;
        pub(crate) fn touch_tls() -> u32;
    }
}

polyplug_runtime::contract! {
    /// `shared.math@1`.
    #[derive(Debug)]
    pub(crate) struct SharedMath {
        pub(crate) fn who() -> u32;
        pub(crate) fn add(a: u32, b: u32) -> u32;
    }
}

polyplug_runtime::contract! {
    /// `c.greeter@1`.
    #[derive(Debug)]
    pub(crate) struct Greeter {
        pub(crate) fn version() -> u32;
        pub(crate) fn add(a: u32, b: u32) -> u32;
        pub(crate) fn greet(buf: *mut u8, len: usize) -> usize;
    }
}

polyplug_runtime::contract! {
    /// `c.extra@1` and `rust.v2only@1`.
    #[derive(Debug)]
    pub(crate) struct Answer {
        pub(crate) fn answer() -> u32;
    }
}

polyplug_runtime::contract! {
    /// `c.dependent@1` (and a prefix of `reload.test@1` and `c.greeter@1`).
    #[derive(Debug)]
    pub(crate) struct Versioned {
        pub(crate) fn version() -> u32;
    }
}

/// The greeting of a `c.greeter` table.
pub(crate) fn greeting(table: &Greeter) -> String {
    let mut buf = [0u8; 64];
    let n = (table.greet)(buf.as_mut_ptr(), buf.len());
    String::from_utf8_lossy(&buf[..n.min(buf.len() - 1)]).into_owned()
}
