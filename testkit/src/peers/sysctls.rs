//! The host sysctls the kubelet of edged insists on.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::skip;

/// What the kubelet's container manager checks at start (`setupKernelTunables`), as
/// `/proc/sys` paths and the values it wants. With `protectKernelDefaults: true` (what
/// real-edgecore.sh sets for `EDGED=1`, so that the kubelet never changes the host on its own)
/// it refuses to start when one differs, e.g. `invalid kernel flag: kernel/panic, expected
/// value: 10, actual value: 1`.
pub const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The sysctls this process changed (name, original value), and how many guards hold them.
struct Held {
    holders: usize,
    changed: Vec<(&'static str, String)>,
}

const PROC_SYS: &str = "/proc/sys";

static HELD: Mutex<Held> = Mutex::new(Held {
    holders: 0,
    changed: Vec::new(),
});

/// A guard that holds the host sysctls of [`KUBELET_SYSCTLS`] at the values the kubelet of
/// edged insists on ([`EdgeOptions::edged`](super::EdgeOptions::edged)), for as long as it
/// lives.
///
/// **This changes host-wide kernel settings for the test's duration**: `kernel.panic=10`
/// (reboot 10 s after a panic), `kernel.panic_on_oops=1` (an oops panics),
/// `vm.overcommit_memory=1` (always overcommit), `vm.panic_on_oom=0`,
/// `kernel.keys.root_maxkeys=1000000`, `kernel.keys.root_maxbytes=25000000`. It is needed because
/// the harness runs the kubelet with `protectKernelDefaults: true` (it must not change the host
/// by itself), and with that the kubelet exits at start when any of them differs. Only values
/// that differ are written; on drop (of the last guard in this process) each is set back to
/// what was found, unless something else changed it meanwhile. Only the kubelet's start needs
/// them, so a test may drop the guard once edged runs; keeping it for the whole test is the
/// simple choice. The values are read and written in `/proc/sys` directly.
#[derive(Debug)]
pub struct KubeletSysctls {
    _private: (),
}

impl KubeletSysctls {
    /// Sets the sysctls, or [`skip`]s (prints `skipped: <why>`, or panics under
    /// `KUBEEDGE_REQUIRE_PEERS=1`) if they cannot be written (not root, `/proc/sys` read-only).
    pub fn apply() -> Option<KubeletSysctls> {
        match Self::try_apply() {
            Ok(guard) => Some(guard),
            Err(why) => skip(why),
        }
    }

    /// Sets the sysctls; why not if they cannot be written (nothing is left changed then).
    pub fn try_apply() -> Result<KubeletSysctls, String> {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        if held.holders == 0 {
            held.changed = set_all(Path::new(PROC_SYS))?;
        }
        held.holders += 1;
        Ok(KubeletSysctls { _private: () })
    }
}

impl Drop for KubeletSysctls {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        held.holders -= 1;
        if held.holders == 0 {
            let changed = std::mem::take(&mut held.changed);
            restore(Path::new(PROC_SYS), &changed);
        }
    }
}

/// Sets every sysctl under `root` (`/proc/sys`) that differs from what the kubelet wants;
/// what it changed (name, original value). On failure nothing is left changed.
fn set_all(root: &Path) -> Result<Vec<(&'static str, String)>, String> {
    let mut changed = Vec::new();
    for (name, want) in KUBELET_SYSCTLS {
        let path = root.join(name);
        let found = match std::fs::read_to_string(&path) {
            Ok(v) => v.trim().to_owned(),
            Err(e) => {
                restore(root, &changed);
                return Err(format!("reading {}: {e}", path.display()));
            }
        };
        if found == want {
            continue;
        }
        if let Err(e) = std::fs::write(&path, format!("{want}\n")) {
            restore(root, &changed);
            return Err(format!(
                "edged's kubelet needs {} = {want} (it is {found}) but it cannot be set ({e}): \
                 run as root on a host whose /proc/sys is writable",
                dotted(name)
            ));
        }
        eprintln!(
            "peers: set {} = {want} (was {found}) for edged's kubelet",
            dotted(name)
        );
        changed.push((name, found));
    }
    Ok(changed)
}

/// Sets each changed sysctl back to its original value, unless it no longer has the value
/// written here.
fn restore(root: &Path, changed: &[(&'static str, String)]) {
    for (name, original) in changed.iter().rev() {
        let want = KUBELET_SYSCTLS
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| *v);
        let path = root.join(name);
        let now = std::fs::read_to_string(&path).map(|v| v.trim().to_owned());
        match now {
            Ok(now) if now == want => match std::fs::write(&path, format!("{original}\n")) {
                Ok(()) => eprintln!("peers: restored {} = {original}", dotted(name)),
                Err(e) => eprintln!(
                    "peers: could not restore {} to {original}: {e}",
                    dotted(name)
                ),
            },
            Ok(now) => eprintln!(
                "peers: {} is {now} now (changed by someone else), not restoring {original}",
                dotted(name)
            ),
            Err(e) => eprintln!("peers: reading {}: {e}", path.display()),
        }
    }
}

/// `kernel/panic` -> `kernel.panic`.
fn dotted(name: &str) -> String {
    name.replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc_sys(values: [&str; 6]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for ((name, _), value) in KUBELET_SYSCTLS.iter().zip(values) {
            let path = root.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        root
    }

    /// The first `n` values under `root`.
    fn read(root: &Path, n: usize) -> Vec<String> {
        KUBELET_SYSCTLS[..n]
            .iter()
            .map(|(name, _)| {
                std::fs::read_to_string(root.join(name))
                    .unwrap()
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn sets_what_differs_and_restores_it() {
        let before = ["2", "0", "1", "0", "200", "20000"];
        let root = fake_proc_sys(before);
        let changed = set_all(root.path()).unwrap();
        let wanted: Vec<&str> = KUBELET_SYSCTLS.iter().map(|(_, v)| *v).collect();
        assert_eq!(read(root.path(), 6), wanted);
        assert_eq!(changed.len(), 5, "vm.panic_on_oom already had its value");
        // something else changes one meanwhile: that one is left alone
        std::fs::write(root.path().join("kernel/panic"), "5\n").unwrap();
        restore(root.path(), &changed);
        assert_eq!(read(root.path(), 6), ["2", "0", "5", "0", "200", "20000"]);
    }

    #[test]
    fn a_failure_leaves_nothing_changed() {
        let root = fake_proc_sys(["2", "0", "1", "0", "200", "20000"]);
        // unreadable as a file: a directory in its place
        let keys = root.path().join("kernel/keys/root_maxbytes");
        std::fs::remove_file(&keys).unwrap();
        std::fs::create_dir(&keys).unwrap();
        let why = set_all(root.path()).unwrap_err();
        assert!(why.contains("root_maxbytes"), "{why}");
        assert_eq!(read(root.path(), 5), ["2", "0", "1", "0", "200"]);
    }
}
