//! Port choice for labs that may run side by side (parallel test binaries,
//! several demos).
//!
//! A port that is free now can be taken by another lab a moment later, before
//! its server binds it. So each lab also writes a reservation file per port in
//! a registry directory shared by every user of the machine; a reservation
//! whose lab directory no longer exists (or no longer lists that port) is
//! stale and may be taken over.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;

use super::error::LabError;
use super::layout::LabLayout;

/// Below Linux's default ephemeral range (32768+), so outgoing connections
/// never sit on a lab port.
const AUTO_RANGE: std::ops::Range<u16> = 20000..32000;
const AUTO_ATTEMPTS: usize = 200;

fn registry_dir() -> PathBuf {
    std::env::var_os("PGHALO_PORT_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("pghalo-ports"))
}

/// Reserves `count` consecutive ports starting at `base`, or at a random free
/// block when `base` is `None`.
pub fn reserve(base: Option<u16>, count: usize, lab_dir: &Path) -> Result<Vec<u16>, LabError> {
    let registry = registry_dir();
    ensure_registry(&registry)?;
    match base {
        Some(base) => {
            let ports = block(base, count).ok_or(LabError::PortRange { base, count })?;
            if let Some(&busy) = ports.iter().find(|&&p| !bindable(p)) {
                return Err(LabError::PortInUse(busy));
            }
            if let Some(&taken) = ports.iter().find(|&&p| !try_reserve(&registry, p, lab_dir)) {
                release_ports(&ports, lab_dir);
                return Err(LabError::PortInUse(taken));
            }
            Ok(ports)
        }
        None => {
            let mut rng = rand::thread_rng();
            for _ in 0..AUTO_ATTEMPTS {
                let start = rng.gen_range(AUTO_RANGE.start..AUTO_RANGE.end - count as u16);
                let Some(ports) = block(start, count) else {
                    continue;
                };
                if !ports.iter().all(|&p| bindable(p)) {
                    continue;
                }
                let mut held = Vec::new();
                for &port in &ports {
                    if !try_reserve(&registry, port, lab_dir) {
                        break;
                    }
                    held.push(port);
                }
                if held.len() == ports.len() {
                    return Ok(ports);
                }
                release_ports(&held, lab_dir);
            }
            Err(LabError::NoFreePorts(count))
        }
    }
}

/// Drops this lab's reservations; reservations held by other labs are left.
pub fn release_ports(ports: &[u16], lab_dir: &Path) {
    let registry = registry_dir();
    for port in ports {
        let path = registry.join(port.to_string());
        if std::fs::read_to_string(&path).is_ok_and(|owner| Path::new(owner.trim()) == lab_dir) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn block(start: u16, count: usize) -> Option<Vec<u16>> {
    let end = usize::from(start).checked_add(count)?;
    (end <= 65536 && start > 0).then(|| (0..count).map(|i| start + i as u16).collect())
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn ensure_registry(registry: &Path) -> Result<(), LabError> {
    if !registry.is_dir() {
        std::fs::create_dir_all(registry)
            .map_err(|e| LabError::io("cannot create the port registry", registry, e))?;
        // Shared by root and normal users alike, like /tmp itself.
        std::fs::set_permissions(registry, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| LabError::io("cannot open up the port registry", registry, e))?;
    }
    Ok(())
}

fn try_reserve(registry: &Path, port: u16, lab_dir: &Path) -> bool {
    let path = registry.join(port.to_string());
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
                return writeln!(file, "{}", lab_dir.display()).is_ok();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !is_stale(&path, port) || std::fs::remove_file(&path).is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn is_stale(reservation: &Path, port: u16) -> bool {
    let Ok(owner) = std::fs::read_to_string(reservation) else {
        return false;
    };
    let owner = PathBuf::from(owner.trim());
    if !owner.exists() {
        return true;
    }
    // A lab being initialised has its directory but no manifest yet: not stale.
    match LabLayout::new(&owner).read_manifest() {
        Ok(manifest) => !manifest.ports().contains(&port),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_stay_in_range() {
        assert_eq!(block(65535, 1), Some(vec![65535]));
        assert_eq!(block(65535, 2), None);
        assert_eq!(block(0, 1), None);
        assert_eq!(block(20000, 3), Some(vec![20000, 20001, 20002]));
    }
}
