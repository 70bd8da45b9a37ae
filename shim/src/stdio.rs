//! Opening the stdio paths containerd hands to Create.
//!
//! The runner writes straight into containerd's fifos: no copy loop in the shim, no buffers
//! per container.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::runner::spawn::RunnerStdio;

/// The container's stdio plus what the shim must keep open on its behalf.
pub struct ContainerIo {
    pub runner: RunnerStdio,
    /// A writer on the stdin fifo, held so the module does not read EOF before the client
    /// has attached; dropped on CloseIO or exit.
    pub stdin_keepalive: Option<File>,
}

pub fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<ContainerIo> {
    let (stdin, stdin_keepalive) = open_stdin(stdin)?;
    Ok(ContainerIo {
        runner: RunnerStdio {
            stdin,
            stdout: open_output(stdout)?,
            stderr: open_output(stderr)?,
        },
        stdin_keepalive,
    })
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

fn open_stdin(uri: &str) -> Result<(File, Option<File>)> {
    let path = match parse(uri)? {
        Target::Null => return Ok((open_null(false)?, None)),
        Target::Path(path) => path,
    };
    if !is_fifo(path) {
        let file = File::open(path).map_err(|err| Error::io("cannot open stdin", path, err))?;
        return Ok((file, None));
    }
    // A non-blocking open never waits for a writer; once we hold the read side, the
    // keepalive writer opens at once too. Then the read side goes back to blocking, as the
    // module expects.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| Error::io("cannot open stdin", path, err))?;
    let keepalive = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| Error::io("cannot open stdin", path, err))?;
    set_blocking(&reader).map_err(|err| Error::io("cannot configure stdin", path, err))?;
    Ok((reader, Some(keepalive)))
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

fn set_blocking(file: &File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(file, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
    fn fifo_stdin_waits_for_its_writer_and_ends_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fifo = fifo.to_str().unwrap();
        let (mut reader, keepalive) = open_stdin(fifo).unwrap();
        let mut client = OpenOptions::new().write(true).open(fifo).unwrap();
        client.write_all(b"ping").unwrap();
        drop(client);
        drop(keepalive);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ping");
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
