//! Stable identifiers: contract ids and bundle ids.
//!
//! Both are FNV-1a-64 hashes, computable at compile time (`const fn`) and from C (the header
//! carries the same function), so a guest in any language derives the same id from the same
//! name. A contract id hashes `"guest_contract:<name>@<major>"`: the major version is part of
//! the id, so two majors of one contract never collide and a caller asking for major 2 can
//! never be handed a major-1 table. Minor versions negotiate at lookup ("same major, minor ≥",
//! [`Version::satisfies`]). A bundle id hashes the bundle name.
//!
//! Hash collisions between *different names* are possible in principle; the registry detects
//! them (`ContractIdCollision`) instead of silently serving the wrong contract.

use core::fmt;

use crate::abi::Version;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a-64 of `bytes`.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv_extend(FNV_OFFSET, bytes)
}

const fn fnv_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// The id of a contract: FNV-1a-64 of `"guest_contract:<name>@<major>"`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractId(u64);

impl ContractId {
    /// The id of contract `name` at major version `major`.
    pub const fn new(name: &str, major: u32) -> Self {
        let mut hash = fnv_extend(FNV_OFFSET, b"guest_contract:");
        hash = fnv_extend(hash, name.as_bytes());
        hash = fnv_extend(hash, b"@");
        // The decimal digits of `major`, most significant first.
        let mut digits = [0u8; 10];
        let mut n = major;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        while len > 0 {
            len -= 1;
            hash ^= digits[len] as u64;
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        Self(hash)
    }

    /// An id from its raw value (as found in a [`GuestContractInterface`]).
    ///
    /// [`GuestContractInterface`]: crate::abi::GuestContractInterface
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn id(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ContractId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// The id of a bundle: FNV-1a-64 of its name.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleId(u64);

impl BundleId {
    /// The id of the bundle called `name`.
    pub const fn new(name: &str) -> Self {
        Self(fnv1a64(name.as_bytes()))
    }

    /// An id from its raw value.
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn id(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// What a caller asks for: a contract by name and major version, with the lowest minor it
/// needs. The id is computed once, at construction (at compile time for a `const`), so a
/// lookup does not hash.
///
/// ```
/// use polyplug_runtime::ids::{ContractId, ContractRef};
///
/// const GREETER: ContractRef<'static> = ContractRef::new("greeter", 2, 1);
/// assert_eq!(GREETER.id(), ContractId::new("greeter", 2));
/// assert_ne!(GREETER.id(), ContractId::new("greeter", 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContractRef<'a> {
    id: ContractId,
    name: &'a str,
    major: u32,
    min_minor: u32,
}

impl<'a> ContractRef<'a> {
    /// Contract `name`, major `major`, any minor ≥ `min_minor`.
    pub const fn new(name: &'a str, major: u32, min_minor: u32) -> Self {
        Self {
            id: ContractId::new(name, major),
            name,
            major,
            min_minor,
        }
    }

    /// The contract id.
    pub const fn id(&self) -> ContractId {
        self.id
    }

    /// The contract name.
    pub const fn name(&self) -> &'a str {
        self.name
    }

    /// The lowest version that satisfies the request (`major.min_minor.0`).
    pub const fn required(&self) -> Version {
        Version::new(self.major, self.min_minor, 0)
    }
}

impl fmt::Display for ContractRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.{}", self.name, self.major, self.min_minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn contract_id_hashes_the_documented_string() {
        for (name, major) in [("reload.test", 1), ("x", 0), ("greeter", 4_000_000_000)] {
            let text = format!("guest_contract:{name}@{major}");
            assert_eq!(ContractId::new(name, major).id(), fnv1a64(text.as_bytes()));
        }
    }

    #[test]
    fn majors_never_share_an_id() {
        let ids: std::collections::HashSet<u64> =
            (0..1000).map(|m| ContractId::new("c", m).id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn ids_are_const_evaluable() {
        const ID: ContractId = ContractId::new("reload.test", 1);
        const BUNDLE: BundleId = BundleId::new("rust-guest");
        assert_eq!(ID, ContractId::new("reload.test", 1));
        assert_eq!(BUNDLE.id(), fnv1a64(b"rust-guest"));
    }
}
