//! Integration tests of engate-attach against real threads, real pseudo-terminals, real Unix
//! sockets and real programs (`seq`, `cat`, `less`), and the `engate` program driven through
//! tmux.

mod cli;
mod hub;
mod model;
mod pty;
mod screen;
mod session;
mod session_edges;
mod support;
mod terminal_mode;
