//! Restarting the host's containerd from inside the installer's pod, through whatever
//! service manager the host runs: systemd (`systemctl`), OpenRC (`rc-service`) or plain init
//! scripts (`/etc/init.d/NAME`, sysvinit and busybox init). Each flavour names the services
//! that may run its containerd (a k3s server or agent, …); the first that is running is the
//! one restarted. The host's programs run in the host's namespaces ([`HostPid1`]), so the
//! pod needs hostPID and the privilege to join them, and nothing beyond the `wedge` binary.

use wedge_runtime_config::containerd::Flavour;

use super::error::{NodeError, Result};
use super::host_process::HostPid1;

/// The host's service manager, as found through PID 1's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceManager {
    Systemd {
        systemctl: String,
    },
    OpenRc {
        rc_service: String,
    },
    /// Scripts in /etc/init.d taking `status` and `restart` (LSB).
    InitScripts,
}

const SYSTEMCTL: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];
const RC_SERVICE: [&str; 2] = ["/sbin/rc-service", "/usr/sbin/rc-service"];

impl ServiceManager {
    /// What the host runs: systemd when booted with it (`/run/systemd/system`, as
    /// sd_booted(3) tells), OpenRC when it has started a runlevel, else init scripts when
    /// /etc/init.d exists. None of them: `Err` naming PID 1 and what was looked for.
    pub fn detect(host: &HostPid1) -> Result<Self> {
        if host.path("/run/systemd/system").is_dir() {
            if let Some(systemctl) = host.find_program(&SYSTEMCTL) {
                return Ok(ServiceManager::Systemd { systemctl });
            }
        }
        if host.path("/run/openrc/softlevel").exists() {
            if let Some(rc_service) = host.find_program(&RC_SERVICE) {
                return Ok(ServiceManager::OpenRc { rc_service });
            }
        }
        if host.path("/etc/init.d").is_dir() {
            return Ok(ServiceManager::InitScripts);
        }
        Err(NodeError::NoServiceManager {
            pid1: host.command_name(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ServiceManager::Systemd { .. } => "systemd",
            ServiceManager::OpenRc { .. } => "OpenRC",
            ServiceManager::InitScripts => "init scripts",
        }
    }

    /// The services that may run the flavour's containerd under this manager.
    pub fn candidates(&self, flavour: Flavour) -> &'static [&'static str] {
        match self {
            ServiceManager::Systemd { .. } => flavour.services(),
            // MicroK8s is a snap, and snaps run under systemd only.
            _ if flavour == Flavour::MicroK8s => &[],
            // k3s' installer names its OpenRC and init.d services as its units; so do the
            // containerd packages.
            _ => flavour.services(),
        }
    }

    fn is_running(&self, host: &HostPid1, service: &str) -> Result<bool> {
        match self {
            ServiceManager::Systemd { systemctl } => {
                host.status(systemctl, &["is-active", "--quiet", service])
            }
            ServiceManager::OpenRc { rc_service } => {
                host.status(rc_service, &[service, "--quiet", "status"])
            }
            ServiceManager::InitScripts => {
                let script = format!("/etc/init.d/{service}");
                match host.find_program(&[&script]) {
                    Some(script) => host.status(&script, &["status"]),
                    None => Ok(false),
                }
            }
        }
    }

    fn restart(&self, host: &HostPid1, service: &str) -> Result<()> {
        match self {
            ServiceManager::Systemd { systemctl } => host.run(systemctl, &["restart", service]),
            ServiceManager::OpenRc { rc_service } => host.run(rc_service, &[service, "restart"]),
            ServiceManager::InitScripts => {
                host.run(&format!("/etc/init.d/{service}"), &["restart"])
            }
        }
    }
}

/// A containerd restarted: by which manager, which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    pub manager: &'static str,
    pub service: String,
}

/// The running service of the flavour's containerd, and its manager.
pub fn running_service(host: &HostPid1, flavour: Flavour) -> Result<(ServiceManager, String)> {
    let manager = ServiceManager::detect(host)?;
    let candidates = manager.candidates(flavour);
    for service in candidates {
        if manager.is_running(host, service)? {
            return Ok((manager, service.to_string()));
        }
    }
    Err(NodeError::NoRunningService {
        manager: manager.name(),
        services: candidates.iter().map(|name| name.to_string()).collect(),
    })
}

/// Restarts the flavour's containerd through the host's service manager.
pub fn restart(host: &HostPid1, flavour: Flavour) -> Result<Restarted> {
    let (manager, service) = running_service(host, flavour)?;
    manager.restart(host, &service)?;
    Ok(Restarted {
        manager: manager.name(),
        service,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_manager_is_found_from_what_the_host_has() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::write(dir.path().join("comm"), "busybox-init\n").unwrap();
        let host = HostPid1::at(dir.path());
        let err = ServiceManager::detect(&host).unwrap_err().to_string();
        assert!(err.contains("\"busybox-init\""), "{err}");
        assert!(err.contains("--restart never"), "{err}");

        std::fs::create_dir_all(root.join("etc/init.d")).unwrap();
        assert_eq!(
            ServiceManager::detect(&host).unwrap(),
            ServiceManager::InitScripts
        );

        std::fs::create_dir_all(root.join("run/openrc")).unwrap();
        std::fs::write(root.join("run/openrc/softlevel"), "default").unwrap();
        executable(&root.join("sbin/rc-service"));
        assert_eq!(
            ServiceManager::detect(&host).unwrap(),
            ServiceManager::OpenRc {
                rc_service: "/sbin/rc-service".into()
            }
        );

        // A systemd binary on a host not booted with systemd does not count.
        executable(&root.join("usr/bin/systemctl"));
        assert!(matches!(
            ServiceManager::detect(&host).unwrap(),
            ServiceManager::OpenRc { .. }
        ));
        std::fs::create_dir_all(root.join("run/systemd/system")).unwrap();
        assert_eq!(
            ServiceManager::detect(&host).unwrap(),
            ServiceManager::Systemd {
                systemctl: "/usr/bin/systemctl".into()
            }
        );
    }

    #[test]
    fn microk8s_is_restarted_through_systemd_only() {
        let systemd = ServiceManager::Systemd {
            systemctl: "/usr/bin/systemctl".into(),
        };
        assert_eq!(
            systemd.candidates(Flavour::MicroK8s),
            ["snap.microk8s.daemon-containerd"]
        );
        assert!(ServiceManager::InitScripts
            .candidates(Flavour::MicroK8s)
            .is_empty());
        assert_eq!(
            ServiceManager::InitScripts.candidates(Flavour::K3s),
            ["k3s", "k3s-agent"]
        );
    }

    #[test]
    fn k0s_is_restarted_as_its_worker_or_controller_service() {
        // k0s supervises its containerd: restarting k0s restarts it (k0s' installer
        // writes systemd units and OpenRC services of these names).
        let systemd = ServiceManager::Systemd {
            systemctl: "/usr/bin/systemctl".into(),
        };
        assert_eq!(
            systemd.candidates(Flavour::K0s),
            ["k0sworker", "k0scontroller"]
        );
        assert_eq!(
            ServiceManager::InitScripts.candidates(Flavour::K0s),
            ["k0sworker", "k0scontroller"]
        );
    }

    #[test]
    fn without_a_running_service_the_candidates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/etc/init.d")).unwrap();
        let err = running_service(&HostPid1::at(dir.path()), Flavour::Rke2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rke2-server") && err.contains("rke2-agent"),
            "{err}"
        );
        assert!(err.contains("init scripts"), "{err}");
    }
}
