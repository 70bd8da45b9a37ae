//! The runner gives up root before the module runs: once the module is compiled (the cache
//! is root-only), its preopened directories are open and its root is pivoted, it takes on
//! `process.user`, drops every capability and sets `no_new_privs`.

use caps::CapSet;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::spec::Identity;

/// Becomes `identity` with no capabilities. setuid/setgid go through libc, which applies
/// them to every thread, but capability sets and no_new_privs are per thread: the runner
/// calls this while it is single-threaded, so that every thread started later inherits the
/// empty sets.
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
