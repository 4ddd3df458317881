//! Panic injection for unit tests: proves that a panic at a named point of a multi-step update
//! (between a slot swap and the ledger commit, say) leaves every account as it was.
//!
//! Outside `cfg(test)` every point compiles to nothing.

#[cfg(test)]
thread_local! {
    static ARMED: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Makes the next [`hit`] of `name` on this thread panic.
#[cfg(test)]
pub(crate) fn arm(name: &'static str) {
    ARMED.with(|a| a.set(Some(name)));
}

/// Panics if `name` is armed on this thread (tests only).
#[cfg(test)]
pub(crate) fn hit(name: &'static str) {
    if ARMED.with(|a| a.get()) == Some(name) {
        ARMED.with(|a| a.set(None));
        panic!("failpoint {name}");
    }
}

/// Nothing outside tests.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn hit(_name: &'static str) {}
