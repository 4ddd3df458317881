//! The macOS exception-port policy, portable so it is tested everywhere.
//!
//! On macOS a page fault in memory the pager guards arrives as a Mach `EXC_BAD_ACCESS`
//! exception message on the task's exception port. The pager takes that port with
//! `task_swap_exception_ports`, which hands back the handler it replaced — the kernel default,
//! or a debugger such as LLDB that attached first. Two rules keep a debugger working in both
//! orderings:
//!
//! - **debugger first**: the replaced handler is kept as the *prior* port, and every exception
//!   outside the pager's regions is forwarded to it (counted in `forwarded_exceptions`);
//! - **debugger later**: a debugger that attaches after the pager swaps in its own port. Every
//!   `poll_interval` the pager re-reads the task's port (the *drift check*); if it is not ours,
//!   the newcomer becomes the prior port and ours is installed again (counted in
//!   `port_reinstalls`), so the pager keeps serving and the debugger still sees every
//!   exception that is not a pager fault.
//!
//! [`ExceptionPolicy`] is that logic over an [`ExceptionPorts`] table. On macOS the table is the
//! real task (through `mach2`, in the private `sys::macos` module); the tests drive it with an
//! in-memory table, which is how it is tested on Linux.

use crate::pager::Pager;
use crate::stats::Stats;

/// A Mach port name (`mach_port_t`); 0 is `MACH_PORT_NULL`.
pub type PortName = u32;

/// The task's exception-port slot for `EXC_BAD_ACCESS`, as the policy needs it.
pub trait ExceptionPorts {
    /// The error type of the underlying calls.
    type Error;

    /// Installs `port` and returns the port it replaced (`task_swap_exception_ports`).
    fn swap(&mut self, port: PortName) -> Result<PortName, Self::Error>;

    /// The port installed now (`task_get_exception_ports`).
    fn current(&self) -> Result<PortName, Self::Error>;
}

/// What to do with one exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The faulting address is in a registered region: serve the page, then reply success.
    Serve,
    /// Not ours: forward the exception to the prior handler (a debugger or the default one).
    Forward(PortName),
    /// Not ours and nobody to forward to: reply failure so the kernel applies its default
    /// (the process receives the signal it would have without the pager).
    Default,
}

/// The capture, forward and drift-check rules. See the [module docs](self).
#[derive(Debug)]
pub struct ExceptionPolicy {
    ours: PortName,
    prior: Option<PortName>,
    installed: bool,
}

impl ExceptionPolicy {
    /// A policy that will install `ours`.
    pub fn new(ours: PortName) -> Self {
        Self {
            ours,
            prior: None,
            installed: false,
        }
    }

    /// Swaps our port in, capturing the handler it replaces as the prior port.
    pub fn install<T: ExceptionPorts>(&mut self, ports: &mut T) -> Result<(), T::Error> {
        let prev = ports.swap(self.ours)?;
        if prev != self.ours && prev != 0 {
            self.prior = Some(prev);
        }
        self.installed = true;
        Ok(())
    }

    /// The prior handler exceptions are forwarded to.
    pub fn prior(&self) -> Option<PortName> {
        self.prior
    }

    /// Whether [`install`](Self::install) ran.
    pub fn is_installed(&self) -> bool {
        self.installed
    }

    /// Decides what to do with an exception at `addr` (`None`: not an address fault).
    pub fn decide(&self, pager: &Pager, addr: Option<u64>) -> Decision {
        match addr {
            Some(a) if pager.contains(a) => Decision::Serve,
            _ => {
                Stats::add(&pager.shared.stats.forwarded_exceptions, 1);
                match self.prior {
                    Some(p) => Decision::Forward(p),
                    None => Decision::Default,
                }
            }
        }
    }

    /// The drift check: if another handler replaced ours, keep it as the prior port and
    /// re-install ours. Returns whether a re-install happened.
    pub fn check_drift<T: ExceptionPorts>(
        &mut self,
        pager: &Pager,
        ports: &mut T,
    ) -> Result<bool, T::Error> {
        let now = ports.current()?;
        if now == self.ours {
            return Ok(false);
        }
        let replaced = ports.swap(self.ours)?;
        let newcomer = if replaced != self.ours { replaced } else { now };
        if newcomer != 0 {
            self.prior = Some(newcomer);
        }
        Stats::add(&pager.shared.stats.port_reinstalls, 1);
        Ok(true)
    }

    /// Puts the prior handler back (on shutdown), if ours is still installed.
    pub fn uninstall<T: ExceptionPorts>(&mut self, ports: &mut T) -> Result<(), T::Error> {
        if self.installed && ports.current()? == self.ours {
            ports.swap(self.prior.unwrap_or(0))?;
        }
        self.installed = false;
        Ok(())
    }
}

/// Whether shutdown was asked for (the Mach loop checks it every receive timeout).
#[cfg(target_os = "macos")]
pub(crate) fn shutting_down(pager: &Pager) -> bool {
    pager
        .shared
        .shutdown
        .load(std::sync::atomic::Ordering::Acquire)
}

#[cfg(target_os = "macos")]
pub(crate) use crate::sys::macos::spawn_mach_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemorySource, PagerConfig};

    /// An in-memory exception-port slot, standing in for the task's.
    #[derive(Debug, Default)]
    struct FakePorts {
        current: PortName,
        swaps: usize,
    }

    impl ExceptionPorts for FakePorts {
        type Error = std::convert::Infallible;
        fn swap(&mut self, port: PortName) -> Result<PortName, Self::Error> {
            self.swaps += 1;
            Ok(std::mem::replace(&mut self.current, port))
        }
        fn current(&self) -> Result<PortName, Self::Error> {
            Ok(self.current)
        }
    }

    const OURS: PortName = 0x1003;
    const LLDB: PortName = 0x2207;
    const DEFAULT: PortName = 0;

    fn pager() -> Pager {
        let pager = Pager::new(
            MemorySource::new(vec![0u8; 1 << 16]),
            PagerConfig::default(),
        );
        pager.register_region(0x8000_0000, 0x1_0000).unwrap();
        pager
    }

    #[test]
    fn debugger_before_the_pager_is_captured_and_receives_foreign_exceptions() {
        let pager = pager();
        let mut ports = FakePorts {
            current: LLDB,
            swaps: 0,
        };
        let mut policy = ExceptionPolicy::new(OURS);
        policy.install(&mut ports).unwrap();
        assert_eq!(ports.current, OURS);
        assert_eq!(policy.prior(), Some(LLDB));
        assert_eq!(policy.decide(&pager, Some(0x8000_0040)), Decision::Serve);
        assert_eq!(policy.decide(&pager, Some(0x10)), Decision::Forward(LLDB));
        assert_eq!(policy.decide(&pager, None), Decision::Forward(LLDB));
        assert!(!policy.check_drift(&pager, &mut ports).unwrap());
        let s = pager.stats();
        assert_eq!((s.forwarded_exceptions, s.port_reinstalls), (2, 0));
        policy.uninstall(&mut ports).unwrap();
        assert_eq!(ports.current, LLDB, "the debugger gets its port back");
    }

    #[test]
    fn debugger_after_the_pager_is_detected_by_the_drift_check_and_ours_reinstalled() {
        let pager = pager();
        let mut ports = FakePorts::default();
        let mut policy = ExceptionPolicy::new(OURS);
        policy.install(&mut ports).unwrap();
        assert_eq!(policy.prior(), None);
        assert_eq!(policy.decide(&pager, Some(0x10)), Decision::Default);
        // The debugger attaches and takes the port.
        ports.swap(LLDB).unwrap();
        assert!(policy.check_drift(&pager, &mut ports).unwrap());
        assert_eq!(ports.current, OURS);
        assert_eq!(policy.prior(), Some(LLDB));
        assert_eq!(policy.decide(&pager, Some(0x10)), Decision::Forward(LLDB));
        assert!(!policy.check_drift(&pager, &mut ports).unwrap());
        let s = pager.stats();
        assert_eq!((s.port_reinstalls, s.forwarded_exceptions), (1, 2));
        // Detached debugger, default handler back: drift again, prior stays the debugger's.
        ports.swap(DEFAULT).unwrap();
        assert!(policy.check_drift(&pager, &mut ports).unwrap());
        assert_eq!(policy.prior(), Some(LLDB));
        assert_eq!(pager.stats().port_reinstalls, 2);
    }
}
