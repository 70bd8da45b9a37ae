//! runc as the native back end drives it: the command line (`runc create` with the
//! container's stdio inherited, `start`, `kill`, `delete`, `exec`), and terminals handed over
//! through a console socket. The init process is reparented to the shim (a subreaper), whose
//! reaper sees it exit.

mod command;
pub mod console;

pub use command::{ExecFiles, InitStdio, Runc, RuncContainer};
pub use console::Console;
