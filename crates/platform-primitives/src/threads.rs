//! Attesting that the process is still single-threaded.
//!
//! Some set-up steps are only sound before any other thread exists: changing process-wide
//! state such as the umask or signal dispositions, `fork` without `exec`, or reading
//! environment variables that another thread might be writing. A function that needs that
//! guarantee takes a [`PreThreadAttestation`] by reference; the only safe way to get one is
//! [`PreThreadAttestation::new`], which counts the process's threads (Linux: `/proc/self/task`;
//! macOS: `proc_pidinfo`) and refuses if there is more than one.
//!
//! ```
//! use platform_primitives::threads::PreThreadAttestation;
//!
//! let helper = std::thread::spawn(std::thread::park);
//! // With a second thread alive the attestation is refused.
//! let err = PreThreadAttestation::new().unwrap_err();
//! assert!(err.to_string().contains("multi-threaded"));
//! helper.thread().unpark();
//! helper.join().unwrap();
//! ```

use std::io;

use crate::sys::os;

/// Proof that the process had exactly one thread when it was created.
///
/// The attestation is a snapshot: it does not stop threads from being spawned later. Take it
/// first thing in `main` and pass it to the set-up steps that need it.
#[derive(Debug)]
pub struct PreThreadAttestation {
    _private: (),
}

/// Why a [`PreThreadAttestation`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadCheckError {
    /// Other threads already exist.
    #[error(
        "process is multi-threaded ({threads} threads); take the attestation before spawning any thread"
    )]
    MultiThreaded {
        /// How many threads were counted.
        threads: usize,
    },
    /// The thread count could not be read.
    #[error("cannot count this process's threads")]
    Probe(#[source] io::Error),
}

impl PreThreadAttestation {
    /// Counts the process's threads and attests if there is exactly one.
    pub fn new() -> Result<Self, ThreadCheckError> {
        match os::thread_count().map_err(ThreadCheckError::Probe)? {
            1 => Ok(Self { _private: () }),
            threads => Err(ThreadCheckError::MultiThreaded { threads }),
        }
    }

    /// An attestation without the check.
    ///
    /// # Safety
    /// The caller must guarantee that no other thread can observe or interfere with the steps
    /// the attestation is passed to (for example: every other thread is parked and touches
    /// neither the filesystem paths nor the process-wide state involved).
    #[allow(unsafe_code)]
    pub unsafe fn new_unchecked() -> Self {
        Self { _private: () }
    }
}
