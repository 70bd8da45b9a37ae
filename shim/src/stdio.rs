//! Opening the stdio paths containerd hands to Create.
//!
//! The runner writes straight into containerd's fifos: no copy loop in the shim, no buffers
//! per container. A stdin fifo is left to the runner (see `runner::child::stdin`), which can afford
//! to wait for the client to attach.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The stdio strings containerd gave at Create or Exec, reported back by State.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// A process's stdio, opened by the shim and inherited by the process (a runner, or the
/// init or exec process `runc` starts).
pub struct OpenedStdio {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// The container's stdio as the runner gets it.
pub struct ContainerIo {
    pub runner: OpenedStdio,
    /// A stdin fifo for the runner to open itself; its fd 0 is /dev/null until then.
    pub stdin_fifo: Option<PathBuf>,
}

pub fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<ContainerIo> {
    let (stdin, stdin_fifo) = open_stdin(stdin)?;
    Ok(ContainerIo {
        runner: OpenedStdio {
            stdin,
            stdout: open_output(stdout)?,
            stderr: open_output(stderr)?,
        },
        stdin_fifo,
    })
}

/// Opens stdio for a runc container. A stdin fifo is relayed through a pipe by a small
/// thread that waits for the client to attach (see [`relay_fifo`]).
pub fn open_native(stdin: &str, stdout: &str, stderr: &str) -> Result<OpenedStdio> {
    let (stdin, stdin_fifo) = open_stdin(stdin)?;
    let stdin = match stdin_fifo {
        None => stdin,
        Some(fifo) => {
            // Close-on-exec: runc hands the read end on as the container's fd 0 itself, and
            // no other child (a runner started meanwhile) may hold the write end.
            let (read_end, write_end) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| Error::Sys {
                    context: "cannot create the stdin pipe",
                    source,
                })?;
            relay_fifo(fifo, File::from(write_end))
                .map_err(|err| Error::io("cannot relay stdin from", "stdin fifo", err))?;
            File::from(read_end)
        }
    };
    Ok(OpenedStdio {
        stdin,
        stdout: open_output(stdout)?,
        stderr: open_output(stderr)?,
    })
}

/// A terminal's client side: where its input comes from (a stdin fifo, relayed) and where
/// its output goes (a tty merges stderr into stdout).
pub struct TerminalIo {
    pub stdin_fifo: Option<PathBuf>,
    pub stdout: File,
}

pub fn open_terminal(stdin: &str, stdout: &str) -> Result<TerminalIo> {
    let stdin_fifo = match parse(stdin)? {
        Target::Null => None,
        Target::Path(path) => Some(PathBuf::from(path)),
    };
    Ok(TerminalIo {
        stdin_fifo,
        stdout: open_output(stdout)?,
    })
}

/// Stdio for a runc command whose process gets a terminal instead.
pub fn null_native() -> Result<OpenedStdio> {
    Ok(OpenedStdio {
        stdin: open_null(false)?,
        stdout: open_null(true)?,
        stderr: open_null(true)?,
    })
}

/// Copies what the client writes into `fifo` to `pipe` on a thread of its own, opening the
/// fifo only once the client is there (a blocking open), and closes `pipe` at the client's
/// EOF so that the reader sees its end of input.
pub fn relay_fifo(fifo: PathBuf, mut pipe: File) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin-relay".into())
        // The copy needs little stack; a small one keeps the footprint down.
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(mut client) = File::open(&fifo) {
                let _ = std::io::copy(&mut client, &mut pipe);
            }
        })?;
    Ok(())
}

/// Where a stdio string points.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Null,
    Path(&'a str),
}

fn parse(uri: &str) -> Result<Target<'_>> {
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Target::Path(path));
    }
    if uri.contains("://") {
        return Err(Error::UnsupportedStdio(uri.to_string()));
    }
    Ok(Target::Path(uri))
}

fn is_fifo(path: &str) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.file_type().is_fifo())
        .unwrap_or(false)
}

fn open_stdin(uri: &str) -> Result<(File, Option<PathBuf>)> {
    let path = match parse(uri)? {
        Target::Null => return Ok((open_null(false)?, None)),
        Target::Path(path) => path,
    };
    if is_fifo(path) {
        // Opening the read side here would race the client: a fifo read before its writer
        // has opened returns EOF.
        return Ok((open_null(false)?, Some(PathBuf::from(path))));
    }
    let file = File::open(path).map_err(|err| Error::io("cannot open stdin", path, err))?;
    Ok((file, None))
}

fn open_output(uri: &str) -> Result<File> {
    let path = match parse(uri)? {
        Target::Null => return open_null(true),
        Target::Path(path) => path,
    };
    let file = if is_fifo(path) {
        // Read-write never blocks on a fifo, whether or not the client's reader is there yet.
        OpenOptions::new().read(true).write(true).open(path)
    } else {
        OpenOptions::new().append(true).create(true).open(path)
    };
    file.map_err(|err| Error::io("cannot open stdio", path, err))
}

fn open_null(write: bool) -> Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|err| Error::io("cannot open", Path::new("/dev/null"), err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Children the shim starts later (runners, runc) must not inherit the write end of a
    /// native container's stdin pipe: while any of them holds it, the container never
    /// sees EOF.
    #[test]
    fn the_stdin_pipe_stays_out_of_later_children() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Pipes the test process was itself started with are not the shim's to close.
        let pipes_before: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| target.starts_with("pipe:"))
            .collect();
        let io = open_native(fifo.to_str().unwrap(), "", "").unwrap();
        let listing = std::process::Command::new("sh")
            .args(["-c", "ls -l /proc/self/fd/"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let inherited_pipes: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains("pipe:"))
            // fds 1 and 2 are the listing's own output pipes.
            .filter(|line| !line.contains(" 1 -> ") && !line.contains(" 2 -> "))
            .filter(|line| {
                !pipes_before
                    .iter()
                    .any(|pipe| line.ends_with(pipe.as_str()))
            })
            .collect();
        assert!(inherited_pipes.is_empty(), "{inherited_pipes:?}");
        drop(io);
        // The relay thread waits for a client: open and close the fifo to let it end.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
    }

    #[test]
    fn uris_are_classified() {
        assert_eq!(parse("").unwrap(), Target::Null);
        assert_eq!(
            parse("/run/x/stdout").unwrap(),
            Target::Path("/run/x/stdout")
        );
        assert_eq!(
            parse("file:///var/log/x").unwrap(),
            Target::Path("/var/log/x")
        );
        assert!(matches!(
            parse("binary:///usr/bin/logger"),
            Err(Error::UnsupportedStdio(_))
        ));
    }

    #[test]
    fn a_stdin_fifo_is_left_to_the_runner() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (_null, left) = open_stdin(fifo.to_str().unwrap()).unwrap();
        assert_eq!(left, Some(fifo));
        let (_null, none) = open_stdin("").unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn file_uri_output_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "a").unwrap();
        let uri = format!("file://{}", log.display());
        open_output(&uri).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ab");
    }
}
