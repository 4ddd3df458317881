//! The platform seam of varta-watch: epoll, signal dispositions and descriptor set-up for hook
//! processes. Linux only: the observer needs `SCM_CREDENTIALS` and pidfds, which macOS lacks.

#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;
