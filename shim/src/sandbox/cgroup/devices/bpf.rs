//! Hand-assembled eBPF and the two bpf(2) commands a device program needs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const CTX_ACCESS_TYPE: i16 = 0;
pub const CTX_MAJOR: i16 = 4;
pub const CTX_MINOR: i16 = 8;

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

// Opcodes: class | operation | source.
pub const LDX_MEM_W: u8 = 0x61;
pub const ALU32_MOV_X: u8 = 0xbc;
pub const ALU32_AND_K: u8 = 0x54;
pub const ALU32_RSH_K: u8 = 0x74;
pub const ALU32_MOV_K: u8 = 0xb4;
pub const ALU64_MOV_K: u8 = 0xb7;
// Jumps of the 64-bit class only: the 32-bit jump class needs Linux 5.1, and runc's
// programs load on the 4.15+ kernels cgroup v2 nodes may run.
pub const JMP_JNE_K: u8 = 0x55;
pub const JMP_JNE_X: u8 = 0x5d;
pub const JMP_EXIT: u8 = 0x95;
/// The class bits of an opcode, and the 32-bit jump class this module never emits.
#[cfg(test)]
pub const CLASS_MASK: u8 = 0x07;
#[cfg(test)]
pub const CLASS_JMP32: u8 = 0x06;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    R0 = 0,
    R1 = 1,
    R2 = 2,
    R3 = 3,
    R4 = 4,
    R5 = 5,
    R6 = 6,
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg:4 and src_reg:4, bit fields whose order follows the byte order.
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Jump offset standing for "past the end of this rule's block" until it is known.
const SKIP_RULE: i16 = i16::MIN;

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        let (dst, src) = (dst as u8, src as u8);
        let regs = if cfg!(target_endian = "little") {
            src << 4 | dst
        } else {
            dst << 4 | src
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    #[cfg(test)]
    pub fn dst(&self) -> usize {
        usize::from(if cfg!(target_endian = "little") {
            self.regs & 0xf
        } else {
            self.regs >> 4
        })
    }

    #[cfg(test)]
    pub fn src(&self) -> usize {
        usize::from(if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0xf
        })
    }

    pub fn load_u32(dst: Reg, base: Reg, off: i16) -> Insn {
        Insn::new(LDX_MEM_W, dst, base, off, 0)
    }

    pub fn mov32_reg(dst: Reg, src: Reg) -> Insn {
        Insn::new(ALU32_MOV_X, dst, src, 0, 0)
    }

    pub fn and32(dst: Reg, imm: i32) -> Insn {
        Insn::new(ALU32_AND_K, dst, Reg::R0, 0, imm)
    }

    pub fn rsh32(dst: Reg, imm: i32) -> Insn {
        Insn::new(ALU32_RSH_K, dst, Reg::R0, 0, imm)
    }

    pub fn mov64(dst: Reg, imm: i32) -> Insn {
        Insn::new(ALU64_MOV_K, dst, Reg::R0, 0, imm)
    }

    pub fn exit() -> Insn {
        Insn::new(JMP_EXIT, Reg::R0, Reg::R0, 0, 0)
    }

    /// Appends to `block` what leaves the rule's block unless `reg` (a u32 field of the
    /// context, zero-extended by its load) equals `value`. A 64-bit compare with an
    /// immediate sign-extends it, so a value above i32::MAX is first moved into R6 with a
    /// 32-bit move, which zero-extends, and compared register to register.
    pub fn skip_rule_unless(block: &mut Vec<Insn>, reg: Reg, value: u32) {
        match i32::try_from(value) {
            Ok(imm) => block.push(Insn::new(JMP_JNE_K, reg, Reg::R0, SKIP_RULE, imm)),
            Err(_) => {
                block.push(Insn::new(ALU32_MOV_K, Reg::R6, Reg::R0, 0, value as i32));
                block.push(Insn::new(JMP_JNE_X, reg, Reg::R6, SKIP_RULE, 0));
            }
        }
    }

    pub fn point_skip_at_block_end(&mut self, insns_after: usize) {
        if matches!(self.code, JMP_JNE_K | JMP_JNE_X) && self.off == SKIP_RULE {
            // A block is at most ten instructions.
            self.off = insns_after as i16;
        }
    }
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it, up to the fields set here; 72 bytes
/// without padding.
#[repr(C, align(8))]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as BPF_PROG_ATTACH reads it. Every byte is a field: the kernel
/// refuses non-zero bytes it does not expect, and padding would be uninitialised.
#[repr(C, align(8))]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
}

fn bpf<T>(command: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live bpf_attr prefix with every byte initialised, and the size
    // passed is exactly its size, so the kernel reads nothing beyond it. The pointers in
    // it (instructions, license, log buffer with its length) are the caller's, valid
    // for the whole call, and the log buffer is the caller's to be written.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// The program's fd, or the error with the verifier's explanation.
///
/// Loaded without a log first, as libbpf does: a log buffer the kernel finds too small fails
/// the load with ENOSPC even for a good program, and some kernels cap its size. Only a load
/// that failed is repeated with a log, growing it until the explanation fits.
pub fn load_device_program(program: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    let error = match load(program, &mut []) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    let mut size = 64 * 1024;
    loop {
        let mut log = vec![0u8; size];
        match load(program, &mut log) {
            // Loaded this time (a passing fault the first time): fine.
            Ok(fd) => return Ok(fd),
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) && size < MAX_LOG => {
                size *= 4;
            }
            Err(_) => {
                let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
                return Err((error, text));
            }
        }
    }
}

/// The largest verifier log asked for (the kernel's own limit is 16 MiB - 1 on old kernels).
const MAX_LOG: usize = 4 * 1024 * 1024;

fn load(program: &[Insn], log: &mut [u8]) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut prog_name = [0u8; 16];
    prog_name[..13].copy_from_slice(b"wedge_devices");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    let mut attempts = 0;
    loop {
        match bpf(BPF_PROG_LOAD, &attr) {
            // SAFETY: a successful BPF_PROG_LOAD returns a new fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }),
            // The verifier gives up with EAGAIN when a signal arrives; libbpf retries too.
            Err(err) if err.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 => {
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

pub fn attach_device_program(cgroup: BorrowedFd, program: BorrowedFd) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
        relative_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr).map(drop)
}
