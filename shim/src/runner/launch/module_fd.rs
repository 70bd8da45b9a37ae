//! Module bytes handed from the shim to a runner as a sealed memfd: no temp file to clean
//! up, and the runner reads exactly the bytes the shim verified.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Error, Result};

pub fn sealed_memfd(bytes: &[u8]) -> Result<OwnedFd> {
    let mut memfd = ModuleMemfd::new()?;
    memfd.append(bytes)?;
    memfd.seal()
}

/// A module memfd being filled piece by piece (a layer as containerd streams it), so the
/// shim never holds a whole module in its own memory.
#[derive(Debug)]
pub struct ModuleMemfd {
    file: File,
}

impl ModuleMemfd {
    pub fn new() -> Result<Self> {
        let fd = memfd_create(
            c"wedge-module",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|source| Error::Sys {
            context: "cannot create a memfd for the module",
            source,
        })?;
        Ok(ModuleMemfd {
            file: File::from(fd),
        })
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|err| Error::io("cannot fill the module memfd", "memfd:wedge-module", err))
    }

    /// The finished module, sealed against any change.
    pub fn seal(self) -> Result<OwnedFd> {
        let mut file = self.file;
        // The runner shares this open file description: it must start reading at the start.
        file.rewind().map_err(|err| {
            Error::io("cannot rewind the module memfd", "memfd:wedge-module", err)
        })?;
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|source| Error::Sys {
            context: "cannot seal the module memfd",
            source,
        })?;
        Ok(OwnedFd::from(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn sealed_memfd_holds_the_bytes_and_refuses_writes() {
        let fd = sealed_memfd(b"\0asm\x01\0\0\0").unwrap();
        let mut file = File::from(fd);
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"\0asm\x01\0\0\0");
        assert!(file.write_all(b"x").is_err());
    }

    #[test]
    fn a_module_filled_piece_by_piece_reads_back_whole() {
        let mut memfd = ModuleMemfd::new().unwrap();
        for piece in [&b"\0asm"[..], b"\x01\0", b"\0\0"] {
            memfd.append(piece).unwrap();
        }
        let mut file = File::from(memfd.seal().unwrap());
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"\0asm\x01\0\0\0");
    }
}
