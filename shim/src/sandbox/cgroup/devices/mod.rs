//! Which device nodes a container may create, read and write: runc's default policy plus the
//! spec's `linux.resources.devices`, as `devices.allow`/`devices.deny` lines on cgroup v1 and
//! as a `BPF_PROG_TYPE_CGROUP_DEVICE` program on cgroup v2, which has no devices files.
//!
//! Semantics are runc's: everything is denied, then the spec's rules and after them runc's
//! default allow entries are applied in order, and the last rule that matches an access
//! decides. The v2 program implements exactly that. v1 is the kernel's exception list, which
//! differs in one corner: a deny only takes away what an earlier allow granted for the very
//! same type and major:minor, so a narrower allow followed by a broader deny keeps the
//! narrower allow there. Real specs (deny all first, then allows) mean the same on both.

mod bpf;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid linux.resources.devices[{index}].{field} {value:?}: expected {expected}")]
    InvalidRule {
        index: usize,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bpf(BPF_PROG_LOAD) of the device program for {cgroup}: {source}{}",
        verifier_log_suffix(.verifier_log)
    )]
    BpfLoad {
        cgroup: PathBuf,
        #[source]
        source: io::Error,
        verifier_log: String,
    },
    #[error("bpf(BPF_PROG_ATTACH) of the device program to {cgroup}: {source}")]
    BpfAttach {
        cgroup: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn verifier_log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("\nverifier log:\n{log}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// Block and character devices (`a`).
    All,
    Block,
    Char,
}

impl DeviceType {
    fn letter(self) -> char {
        match self {
            DeviceType::All => 'a',
            DeviceType::Block => 'b',
            DeviceType::Char => 'c',
        }
    }
}

/// A subset of `rwm`. The bits are the kernel's `BPF_DEVCG_ACC_*` values, so the BPF program
/// compares them as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);
    pub const NONE: Access = Access(0);

    const LETTERS: [(char, Access); 3] = [
        ('r', Access::READ),
        ('w', Access::WRITE),
        ('m', Access::MKNOD),
    ];

    pub fn parse(text: &str) -> Option<Access> {
        text.chars().try_fold(Access::NONE, |access, letter| {
            let (_, bit) = Access::LETTERS.iter().find(|(l, _)| *l == letter)?;
            Some(Access(access.0 | bit.0))
        })
    }

    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (letter, bit) in Access::LETTERS {
            if self.contains(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// One allow or deny entry; `None` for major or minor matches any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub device_type: DeviceType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    const fn allow_char(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            allow: true,
            device_type: DeviceType::Char,
            major: Some(major),
            minor,
            access: Access::ALL,
        }
    }

    fn from_spec(index: usize, device: &LinuxDeviceCgroup) -> Result<Self, DeviceError> {
        let invalid = |field, value: String, expected| DeviceError::InvalidRule {
            index,
            field,
            value,
            expected,
        };
        let device_type = match device.typ() {
            None | Some(LinuxDeviceType::A) => DeviceType::All,
            Some(LinuxDeviceType::B) => DeviceType::Block,
            Some(LinuxDeviceType::C) => DeviceType::Char,
            Some(other @ (LinuxDeviceType::U | LinuxDeviceType::P)) => {
                return Err(invalid("type", other.as_str().to_string(), "a, b or c"))
            }
        };
        let number = |field, value: Option<i64>| match value {
            // runc's own spelling of "any", which some spec writers copy.
            None | Some(-1) => Ok(None),
            Some(number) => u32::try_from(number).map(Some).map_err(|_| {
                invalid(
                    field,
                    number.to_string(),
                    "a device number from 0 to 4294967295, or none for any",
                )
            }),
        };
        // A missing access grants (or takes) nothing, as the kernel reads an empty one.
        let access_text = device.access().as_deref().unwrap_or_default();
        let access = Access::parse(access_text).ok_or_else(|| {
            invalid(
                "access",
                access_text.to_string(),
                "a combination of r, w and m",
            )
        })?;
        Ok(DeviceRule {
            allow: device.allow(),
            device_type,
            major: number("major", device.major())?,
            minor: number("minor", device.minor())?,
            access,
        })
    }

    fn matches_everything(&self) -> bool {
        self.device_type == DeviceType::All
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == Access::ALL
    }

    /// The `devices.allow`/`devices.deny` syntax, e.g. `c 136:* rwm`.
    fn v1_line(&self, device_type: DeviceType) -> String {
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            device_type.letter(),
            number(self.major),
            number(self.minor),
            self.access
        )
    }
}

/// runc's default allow entries, applied after the spec's rules. `/dev/net/tun`, which some
/// runc releases add, is left out: a wasm guest has no use for it. `/dev/console` is not
/// among them (runc binds the console in only for a terminal, which wasm containers refuse).
const DEFAULT_ALLOWED: [DeviceRule; 10] = [
    DeviceRule {
        allow: true,
        device_type: DeviceType::Char,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        allow: true,
        device_type: DeviceType::Block,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule::allow_char(1, Some(3)), // /dev/null
    DeviceRule::allow_char(1, Some(5)), // /dev/zero
    DeviceRule::allow_char(1, Some(7)), // /dev/full
    DeviceRule::allow_char(1, Some(8)), // /dev/random
    DeviceRule::allow_char(1, Some(9)), // /dev/urandom
    DeviceRule::allow_char(5, Some(0)), // /dev/tty
    DeviceRule::allow_char(5, Some(2)), // /dev/ptmx
    DeviceRule::allow_char(136, None),  // /dev/pts/*
];

/// The rules of one container, in the order they apply, on top of an implicit deny-all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    rules: Vec<DeviceRule>,
}

impl Default for DevicePolicy {
    /// runc's default policy alone.
    fn default() -> Self {
        DevicePolicy {
            rules: DEFAULT_ALLOWED.to_vec(),
        }
    }
}

impl DevicePolicy {
    /// The spec's `linux.resources.devices`, followed by runc's default allow entries.
    pub fn from_spec(devices: &[LinuxDeviceCgroup]) -> Result<Self, DeviceError> {
        let mut rules = devices
            .iter()
            .enumerate()
            .map(|(index, device)| DeviceRule::from_spec(index, device))
            .collect::<Result<Vec<_>, _>>()?;
        rules.extend(DEFAULT_ALLOWED);
        Ok(DevicePolicy { rules })
    }

    pub fn rules(&self) -> &[DeviceRule] {
        &self.rules
    }

    /// (file, line) in the order to write them to a v1 devices cgroup, starting with the
    /// deny-all.
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        let deny_all = DeviceRule {
            allow: false,
            device_type: DeviceType::All,
            major: None,
            minor: None,
            access: Access::ALL,
        };
        let mut writes = Vec::new();
        for rule in std::iter::once(&deny_all).chain(&self.rules) {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            // The kernel reads "a" alone and ignores the rest of the line, so an "a" rule
            // narrower than everything must be spelled once per type.
            let types: &[DeviceType] = if rule.access.is_empty() {
                &[]
            } else if rule.device_type != DeviceType::All || rule.matches_everything() {
                std::slice::from_ref(&rule.device_type)
            } else {
                &[DeviceType::Char, DeviceType::Block]
            };
            for device_type in types {
                writes.push((file, rule.v1_line(*device_type)));
            }
        }
        writes
    }

    /// Writes the policy to the v1 devices cgroup `dir`, one rule per write(2) as the kernel
    /// wants them.
    pub fn apply_v1(&self, dir: &Path) -> Result<(), DeviceError> {
        for (file, line) in self.v1_writes() {
            let path = dir.join(file);
            // Appending changes nothing for the kernel, and keeps every rule readable when
            // `dir` is a plain directory standing in for a cgroup.
            OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut control| control.write_all(format!("{line}\n").as_bytes()))
                .map_err(|source| DeviceError::Io {
                    action: "write a device rule to",
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Loads the policy as a BPF device program and attaches it to the cgroup2 directory
    /// `dir`. With `BPF_F_ALLOW_MULTI` every attached program, and those of the ancestors,
    /// must allow an access, so calling this again can only narrow the policy.
    pub fn apply_v2(&self, dir: &Path) -> Result<(), DeviceError> {
        let cgroup = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map_err(|source| DeviceError::Io {
                action: "open cgroup",
                path: dir.to_path_buf(),
                source,
            })?;
        let program =
            bpf::load_device_program(&self.bpf_program()).map_err(|(source, verifier_log)| {
                DeviceError::BpfLoad {
                    cgroup: dir.to_path_buf(),
                    source,
                    verifier_log,
                }
            })?;
        // The attachment holds its own reference to the program until the cgroup goes, so
        // `program` may close when it drops.
        bpf::attach_device_program(cgroup.as_fd(), program.as_fd()).map_err(|source| {
            DeviceError::BpfAttach {
                cgroup: dir.to_path_buf(),
                source,
            }
        })
    }

    /// The program: the rules from last to first, each returning its verdict when it
    /// matches, so the last matching rule wins; nothing matching means deny.
    fn bpf_program(&self) -> Vec<bpf::Insn> {
        use bpf::{Insn, Reg};
        let mut program = vec![
            Insn::load_u32(Reg::R2, Reg::R1, bpf::CTX_ACCESS_TYPE),
            Insn::mov32_reg(Reg::R3, Reg::R2),
            Insn::rsh32(Reg::R3, 16),
            Insn::and32(Reg::R2, 0xffff),
            Insn::load_u32(Reg::R4, Reg::R1, bpf::CTX_MAJOR),
            Insn::load_u32(Reg::R5, Reg::R1, bpf::CTX_MINOR),
        ];
        // R2 type, R3 requested access, R4 major, R5 minor; R1 is free from here on.
        for rule in self.rules.iter().rev() {
            let mut block = Vec::new();
            match rule.device_type {
                DeviceType::All => {}
                DeviceType::Block => Insn::skip_rule_unless(&mut block, Reg::R2, 1),
                DeviceType::Char => Insn::skip_rule_unless(&mut block, Reg::R2, 2),
            }
            if rule.access != Access::ALL {
                // Any requested bit outside the rule's access (unknown ones included)
                // means the rule does not match.
                block.push(Insn::mov32_reg(Reg::R1, Reg::R3));
                block.push(Insn::and32(Reg::R1, !i32::from(rule.access.0)));
                Insn::skip_rule_unless(&mut block, Reg::R1, 0);
            }
            if let Some(major) = rule.major {
                Insn::skip_rule_unless(&mut block, Reg::R4, major);
            }
            if let Some(minor) = rule.minor {
                Insn::skip_rule_unless(&mut block, Reg::R5, minor);
            }
            block.push(Insn::mov64(Reg::R0, i32::from(rule.allow)));
            block.push(Insn::exit());
            let len = block.len();
            for (index, insn) in block.iter_mut().enumerate() {
                insn.point_skip_at_block_end(len - index - 1);
            }
            program.extend(block);
            if rule.matches_everything() {
                // Rules before this one can never be reached.
                return program;
            }
        }
        program.push(Insn::mov64(Reg::R0, 0));
        program.push(Insn::exit());
        program
    }
}

#[cfg(test)]
mod tests;
