//! The system calls a local sandbox may not make.
//!
//! The list is Docker's default profile turned around: Docker allows a long
//! list and denies the rest; we allow everything except what Docker denies
//! to a container without extra capabilities, plus a few calls that newer
//! kernels added since. Each denied call answers `EPERM`, so a program that
//! tries one sees an ordinary error instead of being killed.
//!
//! Most of these already fail for the sandbox's user, which holds no
//! capability; the filter is the second wall, for the day a kernel bug makes
//! a capability check pass that should not. Why each group is here:
//!
//! | calls | why |
//! |---|---|
//! | `keyctl`, `add_key`, `request_key` | the kernel keyring is not namespaced: a key one run adds would be visible to the next run and to the host |
//! | `mount`, `umount2`, `pivot_root`, `move_mount`, `open_tree`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `mount_setattr` | changing the mount table is how a process would undo the read-only binds |
//! | `unshare`, `setns`, and `clone` with a `CLONE_NEW*` flag | new or foreign namespaces; nested user namespaces are the classic path to kernel bugs |
//! | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup`, `io_uring_enter`, `io_uring_register` | large kernel attack surfaces that sandboxed agents do not need; most kernel exploits of recent years went through one of them |
//! | `kexec_load`, `kexec_file_load`, `reboot`, `init_module`, `finit_module`, `delete_module` | replace or extend the running kernel |
//! | `swapon`, `swapoff`, `acct`, `quotactl`, `quotactl_fd`, `nfsservctl`, `vhangup` | host-wide settings |
//! | `settimeofday`, `clock_settime`, `clock_adjtime`, `adjtimex`, `stime` | the host's clock |
//! | `sethostname`, `setdomainname` | names outside the sandbox's UTS namespace view |
//! | `iopl`, `ioperm` | raw I/O port access |
//! | `lookup_dcookie`, `kcmp`, `name_to_handle_at`, `open_by_handle_at` | reading kernel state, or opening files by handle, which skips path checks (the "shocker" container escape) |
//! | `get_mempolicy`, `set_mempolicy`, `mbind`, `move_pages`, `migrate_pages` | NUMA placement of other processes' memory |
//! | `uselib`, `_sysctl`, `ustat`, `sysfs`, `syslog`, `personality`-free legacy calls | obsolete interfaces with a history of bugs; `syslog` reads the kernel log |
//!
//! `clone3` answers `ENOSYS`, as in Docker: its flags sit in memory a
//! filter cannot read, and on `ENOSYS` the C library falls back to `clone`,
//! whose flags it can.
//!
//! `ptrace` and `process_vm_readv`/`writev` stay allowed, as in Docker on
//! kernels from 4.8: debuggers need them, and the runner is out of their
//! reach because it is not dumpable (see `docs/security.md`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The denied calls, by name (for the docs and tests) and number.
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("vhangup", libc::SYS_vhangup),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("kcmp", libc::SYS_kcmp),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("mbind", libc::SYS_mbind),
    ("move_pages", libc::SYS_move_pages),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("syslog", libc::SYS_syslog),
    ("sysfs", libc::SYS_sysfs),
    ("ustat", libc::SYS_ustat),
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    #[cfg(target_arch = "x86_64")]
    ("nfsservctl", libc::SYS_nfsservctl),
];

/// The `clone` flags that make a new namespace.
const NAMESPACE_FLAGS: [libc::c_int; 8] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

/// Builds the filters for this machine's architecture: the denylist
/// (`EPERM`), then `clone3` (`ENOSYS`).
pub(crate) fn filters() -> Result<[BpfProgram; 2], String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for {}: {e}", std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    let namespace_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = u64::from(flag.unsigned_abs());
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("could not build the clone rule: {e}"))?;
    rules.insert(libc::SYS_clone, namespace_rules);
    let denylist = compile(rules, libc::EPERM, arch)?;
    let clone3 = compile([(libc::SYS_clone3, Vec::new())].into(), libc::ENOSYS, arch)?;
    Ok([denylist, clone3])
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: libc::c_int,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    let errno = errno.unsigned_abs();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(|e| format!("could not build the seccomp filter: {e}"))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| {
        format!("could not compile the seccomp filter: {e}")
    })
}

/// Installs the filters on the calling thread, after `no_new_privs`, which
/// the kernel requires of a process without `CAP_SYS_ADMIN`.
pub(crate) fn install() -> Result<(), String> {
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| format!("could not set no_new_privs: {e}"))?;
    for program in filters()? {
        seccompiler::apply_filter(&program)
            .map_err(|e| format!("could not install seccomp: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_covers_the_issue_list() {
        let [denylist, clone3] = filters().expect("filters");
        assert!(denylist.len() > DENIED.len(), "one check per call at least");
        assert!(!clone3.is_empty());
        for required in [
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "pivot_root",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "unshare",
            "setns",
        ] {
            assert!(
                DENIED.iter().any(|(name, _)| *name == required),
                "{required} must be denied"
            );
        }
    }

    #[test]
    fn every_call_is_listed_once() {
        let mut numbers: Vec<_> = DENIED.iter().map(|(_, n)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), DENIED.len());
    }
}
