//! The spec's `linux.seccomp` as filters stacked on the baseline: one for its default
//! action and one per other action of its rules; what the runner cannot honour is refused
//! with the field's name.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

use super::install::order_for_installation;
use super::{internal, invalid, syscall_number, Native, SeccompError};

/// What errno the kernel can return: larger values are clamped by it.
const MAX_ERRNO: u32 = 4095;

/// The spec's profile as filters, in an order in which each can still be installed after
/// the ones before it.
pub(super) fn translate(
    profile: &LinuxSeccomp,
    native: &Native,
) -> Result<Vec<BpfProgram>, SeccompError> {
    refuse_what_cannot_be_honoured(profile)?;
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    // Syscalls some rule matches: the default filter lets them through to the others.
    let mut matched = Matches::default();
    let mut by_action: Vec<(SeccompAction, Matches)> = Vec::new();
    for (index, rule) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{index}]");
        let rule_action = action(
            rule.action(),
            rule.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let when = When::of(rule, &field)?;
        if rule_action == default {
            continue;
        }
        let numbers: Vec<i64> = rule
            .names()
            .iter()
            .filter_map(|name| syscall_number(name))
            .collect();
        if default != SeccompAction::Allow {
            matched.add(&numbers, &when);
        }
        if rule_action != SeccompAction::Allow {
            let position = match by_action
                .iter()
                .position(|(known, _)| *known == rule_action)
            {
                Some(position) => position,
                None => {
                    by_action.push((rule_action.clone(), Matches::default()));
                    by_action.len() - 1
                }
            };
            by_action[position].1.add(&numbers, &when);
        }
    }
    let mut programs = Vec::new();
    for (rule_action, matches) in by_action {
        if !matches.is_empty() {
            programs.push(compile(matches, SeccompAction::Allow, rule_action, native)?);
        }
    }
    if default != SeccompAction::Allow {
        programs.push(compile(matched, default, SeccompAction::Allow, native)?);
    }
    order_for_installation(programs, native)
}

fn refuse_what_cannot_be_honoured(profile: &LinuxSeccomp) -> Result<(), SeccompError> {
    for flag in profile.flags().iter().flatten() {
        match flag {
            // Every filter is installed with TSYNC anyway.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
            other => {
                return Err(invalid(
                    "linux.seccomp.flags",
                    format!("{other} is not supported for wasm containers"),
                ))
            }
        }
    }
    if profile
        .listener_path()
        .as_ref()
        .is_some_and(|path| !path.as_os_str().is_empty())
    {
        return Err(invalid(
            "linux.seccomp.listenerPath",
            "seccomp agents (SCMP_ACT_NOTIFY) are not supported for wasm containers",
        ));
    }
    if profile
        .listener_metadata()
        .as_ref()
        .is_some_and(|metadata| !metadata.is_empty())
    {
        return Err(invalid(
            "linux.seccomp.listenerMetadata",
            "seccomp agents (SCMP_ACT_NOTIFY) are not supported for wasm containers",
        ));
    }
    // `architectures` needs nothing: the filters answer for the native ABI, as libseccomp
    // always adds it, and kill any other ABI (x86 or x32 on x86_64, arm on aarch64), which a
    // runner never uses; an arch that cannot run here cannot make syscalls here either.
    Ok(())
}

/// What the kernel should do, as a profile names it (errnoRet defaults to EPERM, as in runc).
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    action_field: &str,
    errno_field: &str,
) -> Result<SeccompAction, SeccompError> {
    let data = |limit: u32| {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        if value > limit {
            Err(invalid(
                errno_field,
                format!("{value} is out of range (at most {limit})"),
            ))
        } else {
            Ok(value)
        }
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(data(MAX_ERRNO)?),
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(data(u32::from(u16::MAX))?),
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                action_field,
                "SCMP_ACT_NOTIFY is not supported for wasm containers (there is no seccomp \
                 agent to notify)",
            ))
        }
    })
}

/// When a rule matches a call, by its arguments.
enum When {
    Always,
    /// Any of these; none at all when the rule's conditions can never hold.
    AnyOf(Vec<SeccompRule>),
}

impl When {
    fn of(rule: &LinuxSyscall, field: &str) -> Result<When, SeccompError> {
        let args = rule.args().as_deref().unwrap_or_default();
        if args.is_empty() {
            return Ok(When::Always);
        }
        let conditions = args
            .iter()
            .enumerate()
            .map(|(index, arg)| condition(arg, &format!("{field}.args[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = [false; 6];
        // `condition` has checked every index is below 6.
        let repeats_an_argument = args
            .iter()
            .any(|arg| std::mem::replace(&mut seen[arg.index()], true));
        let rule_of = |conditions| SeccompRule::new(conditions).map_err(|err| internal(&err));
        if repeats_an_argument {
            // What runc does (and libseccomp cannot do otherwise): each condition on its own.
            let rules = conditions
                .into_iter()
                .flatten()
                .map(|condition| rule_of(vec![condition]))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(When::AnyOf(rules))
        } else {
            match conditions.into_iter().collect::<Option<Vec<_>>>() {
                Some(all) => Ok(When::AnyOf(vec![rule_of(all)?])),
                None => Ok(When::AnyOf(Vec::new())),
            }
        }
    }
}

/// One argument condition, compared on all 64 bits as libseccomp does on 64-bit arches;
/// None when it can never hold.
fn condition(arg: &LinuxSeccompArg, field: &str) -> Result<Option<SeccompCondition>, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|index| *index <= 5)
        .ok_or_else(|| {
            invalid(
                &format!("{field}.index"),
                format!(
                    "{} is not a syscall argument (they are numbered 0 to 5)",
                    arg.index()
                ),
            )
        })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let mask = arg.value();
            let expected = arg.value_two().unwrap_or(0);
            // libseccomp compares (arg & value) with valueTwo as given; seccompiler would
            // mask valueTwo too, and match where libseccomp never does.
            if expected & !mask != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), expected)
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|err| internal(&err))
}

/// The syscalls one filter matches, by number; None when regardless of arguments.
#[derive(Default)]
struct Matches(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl Matches {
    fn add(&mut self, numbers: &[i64], when: &When) {
        for number in numbers {
            match when {
                When::Always => {
                    self.0.insert(*number, None);
                }
                When::AnyOf(rules) if rules.is_empty() => {}
                When::AnyOf(rules) => {
                    // Never left empty: to seccompiler no rules means "always".
                    if let Some(known) = self.0.entry(*number).or_insert_with(|| Some(Vec::new())) {
                        known.extend(rules.iter().cloned());
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn compile(
    matches: Matches,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    native: &Native,
) -> Result<BpfProgram, SeccompError> {
    let rules = matches
        .0
        .into_iter()
        .map(|(number, rules)| (number, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, native.target)
        .map_err(|err| internal(&err))?;
    BpfProgram::try_from(filter).map_err(|err| match err {
        BackendError::FilterTooLarge(_) => invalid(
            "linux.seccomp.syscalls",
            format!("the profile does not fit in a seccomp filter: {err}"),
        ),
        other => internal(&other),
    })
}
