//! Integration tests of platform-primitives against real OS objects: sockets bound in the
//! filesystem, real child processes as peers, real pipes passed between sockets, real mappings.

mod clock;
mod creds;
mod fdpass;
mod mem;
mod support;
mod threads;
mod uds;
