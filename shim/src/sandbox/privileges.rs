//! The runner gives up root before the module runs: once the module is compiled (the cache
//! is root-only) and its preopened directories are open, it takes on `process.user`, drops
//! every capability and sets `no_new_privs`.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::spec::Identity;

/// Becomes `identity` with no capabilities. setuid/setgid go through libc, which applies
/// them to every thread; capability sets are per thread, and the module's host calls run
/// on this one (threads started later inherit the empty sets).
pub fn drop_to(identity: &Identity) -> Result<(), String> {
    // The bounding and ambient sets first: dropping from them needs CAP_SETPCAP.
    caps::clear(None, CapSet::Ambient)
        .map_err(|err| format!("cannot clear ambient caps: {err}"))?;
    caps::clear(None, CapSet::Bounding)
        .map_err(|err| format!("cannot clear the capability bounding set: {err}"))?;
    let groups: Vec<Gid> = identity
        .additional_gids
        .iter()
        .copied()
        .map(Gid::from_raw)
        .collect();
    setgroups(&groups).map_err(|err| format!("cannot set groups {groups:?}: {err}"))?;
    setgid(Gid::from_raw(identity.gid))
        .map_err(|err| format!("cannot set gid {}: {err}", identity.gid))?;
    setuid(Uid::from_raw(identity.uid))
        .map_err(|err| format!("cannot set uid {}: {err}", identity.uid))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|err| format!("cannot clear {set:?} caps: {err}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|err| format!("cannot set no_new_privs: {err}"))
}

/// What the supervising parent of a runner in the pod's pid namespace keeps: the right to
/// signal its child whatever user the child becomes, and nothing else.
pub fn keep_only_kill() -> Result<(), String> {
    let mut kill_only = CapsHashSet::new();
    kill_only.insert(Capability::CAP_KILL);
    for cap in caps::all() {
        if cap != Capability::CAP_KILL {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|err| format!("cannot drop {cap} from the bounding set: {err}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|err| format!("cannot clear ambient caps: {err}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|err| format!("cannot clear inheritable caps: {err}"))?;
    caps::set(None, CapSet::Effective, &kill_only)
        .map_err(|err| format!("cannot limit effective caps: {err}"))?;
    caps::set(None, CapSet::Permitted, &kill_only)
        .map_err(|err| format!("cannot limit permitted caps: {err}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|err| format!("cannot set no_new_privs: {err}"))
}
