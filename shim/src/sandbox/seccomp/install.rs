//! Installing the stack: in an order in which each filter still lets the next one in, with
//! seccomp(2) and TSYNC so that every thread of the runner takes it on.

use seccompiler::{sock_filter, BpfProgram};

use super::{invalid, Native, SeccompError};

/// The kernel's limit on the instructions of one filter.
const BPF_MAXINSNS: usize = 4096;

/// Each filter is installed through seccomp(2) while the earlier ones are already in force,
/// so every filter but the last must let that call through. A profile that denies it (one
/// recorded from a workload typically does, by its default action) goes last.
pub(super) fn order_for_installation(
    programs: Vec<BpfProgram>,
    native: &Native,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let call = install_call(native);
    let (allowing, denying): (Vec<_>, Vec<_>) = programs
        .into_iter()
        .partition(|program| evaluate(program, &call).is_some_and(allows));
    if denying.len() > 1 {
        return Err(invalid(
            "linux.seccomp.syscalls",
            "the profile denies seccomp(2) with more than one action; Wedge installs a \
             profile as stacked filters through seccomp(2) and could not install them all",
        ));
    }
    Ok(allowing.into_iter().chain(denying).collect())
}

/// The syscall `install` makes, as a filter sees it (the filter's address aside, which no
/// sensible profile looks at).
pub(super) fn install_call(native: &Native) -> SyscallData {
    SyscallData {
        nr: libc::SYS_seccomp as i32,
        arch: native.audit_arch,
        args: [
            u64::from(libc::SECCOMP_SET_MODE_FILTER),
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            0,
            0,
            0,
            0,
        ],
    }
}

pub(super) fn allows(verdict: u32) -> bool {
    matches!(
        verdict & libc::SECCOMP_RET_ACTION_FULL,
        libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_LOG
    )
}

/// `struct seccomp_data` without the instruction pointer, which no filter of ours reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct SyscallData {
    pub(super) nr: i32,
    pub(super) arch: u32,
    pub(super) args: [u64; 6],
}

impl SyscallData {
    /// The 32-bit word at `offset` of `struct seccomp_data` (little-endian arches only, like
    /// seccompiler).
    fn word(&self, offset: u32) -> Option<u32> {
        match offset {
            0 => Some(self.nr as u32),
            4 => Some(self.arch),
            8 | 12 => Some(0),
            16..=60 if offset % 4 == 0 => {
                let arg = self.args[usize::try_from((offset - 16) / 8).ok()?];
                Some(if offset % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                })
            }
            _ => None,
        }
    }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// What a filter answers to a syscall, run as the kernel runs it: how the order of the
/// stack is chosen, and how the tests read the filters. None for an instruction
/// seccompiler never emits.
pub(super) fn evaluate(program: &[sock_filter], data: &SyscallData) -> Option<u32> {
    let mut accumulator = 0u32;
    let mut next = 0usize;
    // Classic BPF only jumps forward, so this ends within the program's length.
    loop {
        let instruction = program.get(next)?;
        next += 1;
        match instruction.code {
            BPF_LD_W_ABS => accumulator = data.word(instruction.k)?,
            BPF_ALU_AND_K => accumulator &= instruction.k,
            BPF_JMP_JA => next = next.checked_add(usize::try_from(instruction.k).ok()?)?,
            BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K => {
                let taken = match instruction.code {
                    BPF_JMP_JEQ_K => accumulator == instruction.k,
                    BPF_JMP_JGT_K => accumulator > instruction.k,
                    _ => accumulator >= instruction.k,
                };
                next += usize::from(if taken {
                    instruction.jt
                } else {
                    instruction.jf
                });
            }
            BPF_RET_K => return Some(instruction.k),
            _ => return None,
        }
    }
}

/// `struct sock_fprog` of seccomp(2).
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

pub(super) enum InstallFailure {
    Malformed(usize),
    Errno(std::io::Error),
    ThreadSync(libc::c_long),
}

impl InstallFailure {
    pub(super) fn into_error(self, index: usize, count: usize) -> SeccompError {
        match self {
            InstallFailure::Malformed(len) => SeccompError::Internal(format!(
                "seccomp filter {index} of {count} has {len} instructions (1 to {BPF_MAXINSNS} \
                 fit)"
            )),
            InstallFailure::Errno(err) if err.raw_os_error() == Some(libc::EACCES) => {
                SeccompError::NoNewPrivs { index, count }
            }
            InstallFailure::Errno(source) => SeccompError::Install {
                index,
                count,
                source,
            },
            InstallFailure::ThreadSync(tid) => SeccompError::ThreadSync { index, count, tid },
        }
    }
}

/// seccomp(2) itself rather than seccompiler's helper, which calls prctl first: a profile
/// may deny prctl, and the arguments must be those `install_call` ordered the filters by.
pub(super) fn install(program: &[sock_filter]) -> Result<(), InstallFailure> {
    let len = match u16::try_from(program.len()) {
        Ok(len) if (1..=BPF_MAXINSNS).contains(&program.len()) => len,
        _ => return Err(InstallFailure::Malformed(program.len())),
    };
    let fprog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    let unused: libc::c_ulong = 0;
    // SAFETY: seccomp(2) copies `len` instructions from `filter`, which `program` keeps alive
    // for the call, and writes no memory of ours.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const SockFprog,
            unused,
            unused,
            unused,
        )
    };
    match result {
        0 => Ok(()),
        // With TSYNC, a positive result is the thread that could not take the filter on.
        tid if tid > 0 => Err(InstallFailure::ThreadSync(tid)),
        _ => Err(InstallFailure::Errno(std::io::Error::last_os_error())),
    }
}
