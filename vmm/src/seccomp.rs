//! Syscall filters (seccomp-bpf) for each thread role of the VMM: the roles
//! and their allow-lists; `parvm-sandbox` compiles (with `seccompiler`, as
//! Firecracker builds its own) and installs them.
//!
//! Once set-up is over every thread may make only the system calls its job
//! needs; any other call kills the whole process (`SECCOMP_RET_KILL_PROCESS`),
//! so the partition manager sees the VMM die of SIGSYS and marks the
//! partition crashed. The roles, and why each call is on its list, are in
//! docs/security.md:
//!
//! - [`Role::Vcpu`]: the KVM_RUN loop and the exit handling that runs on it
//!   (port I/O and MMIO devices, virtio-mmio activation, hcalls and fault
//!   reports sent on the control channel, the vhost-user frontend);
//! - [`Role::Device`]: the event-manager thread of the in-VMM virtio-blk
//!   (eventfds, epoll, reads and writes of the disk image; vhost-user
//!   messages for a shared-memory partition's VIOS disks, served here);
//! - [`Role::Control`]: the control channel (SCM_RIGHTS messages, mapping of
//!   granted segments as KVM memory slots, doorbells as ioeventfd/irqfd,
//!   re-attaching to a restarted manager);
//! - [`Role::Pager`]: the pager of a shared-memory partition (userfaultfd
//!   ioctls, punching pages out of the guest-RAM memfd, vhost-user messages
//!   to its paging device and re-dialling it);
//! - [`Role::Dump`]: the dump thread (guest RAM read from its memfd and
//!   released after a crash, vhost-user messages to the dump disk, pausing
//!   the vCPUs for an on-demand dump, the watchdog's exit request);
//! - [`Role::Main`]: the main thread once the others run (console input,
//!   kicking vCPUs out of KVM_RUN, the exit report).
//!
//! `main` calls [`configure`] once with the `--seccomp` mode; it compiles
//! every role's filter, so a filter that cannot be built is a start-up
//! error. Each thread then calls [`apply`] with its role before it does its
//! work. Without `configure` (the crate used as a library, its tests)
//! `apply` does nothing. A filter is inherited by the threads its thread
//! creates afterwards: the vhost-user call relay a vCPU starts when the
//! guest activates a vhost-user disk runs under the vCPU filter.

use crate::pager::uffd;
pub use parvm_sandbox::{
    apply, build, install, syscalls, Allow, RoleFilter, SeccompError, SeccompMode,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

/// A thread's job, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Main,
    Vcpu,
    Device,
    Control,
    Pager,
    Dump,
}

// KVM ioctls the threads make after set-up (kvm-ioctls keeps its numbers
// private; these are the same definitions).
const KVMIO: u32 = 0xae;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);

/// Talking to the manager or a vhost-user backend over a Unix socket, with
/// descriptors beside the messages.
fn unix_messages() -> Vec<Allow> {
    use Allow::*;
    vec![
        Any(libc::SYS_sendmsg),
        Any(libc::SYS_recvmsg),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
        Any(libc::SYS_read),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_shutdown),
        Any(libc::SYS_fcntl),
        Any(libc::SYS_dup),
        Any(libc::SYS_eventfd2),
    ]
}

/// Dialing a Unix socket by path (manager re-attach, vhost-user backend).
fn unix_connect() -> Vec<Allow> {
    use Allow::*;
    vec![
        ArgIn(libc::SYS_socket, 0, vec![libc::AF_UNIX as u64]),
        Any(libc::SYS_connect),
        Any(libc::SYS_setsockopt),
        // SO_PEERCRED of a re-attached manager, checked against our user.
        Any(libc::SYS_getsockopt),
        Any(libc::SYS_geteuid),
    ]
}

impl parvm_sandbox::Role for Role {
    const ALL: &'static [Role] = &[
        Role::Main,
        Role::Vcpu,
        Role::Device,
        Role::Control,
        Role::Pager,
        Role::Dump,
    ];

    fn name(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Vcpu => "vcpu",
            Role::Device => "device",
            Role::Control => "control",
            Role::Pager => "pager",
            Role::Dump => "dump",
        }
    }

    /// The role's allow-list.
    ///
    /// Every thread: Rust's std, the allocator, `tracing` to stderr, the VMM's
    /// signal handlers (SIGTERM writes the exit eventfd, the vCPU kick is a
    /// no-op handler), thread exit, and an abort on panic
    /// ([`parvm_sandbox::rust_runtime`]).
    fn allowed(self) -> Vec<Allow> {
        use Allow::*;
        let mut list = parvm_sandbox::rust_runtime();
        match self {
            Role::Main => {
                list.extend([
                    Any(libc::SYS_poll),
                    Any(libc::SYS_ppoll),
                    Any(libc::SYS_read),
                    // The terminal's settings come back when the VMM ends.
                    ArgIn(libc::SYS_ioctl, 1, vec![libc::TCGETS, libc::TCSETS]),
                    // The exit report on the control channel.
                    Any(libc::SYS_sendmsg),
                    Any(libc::SYS_fcntl),
                    Any(libc::SYS_shutdown),
                ]);
            }
            Role::Vcpu => {
                list.push(ArgIn(
                    libc::SYS_ioctl,
                    1,
                    vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS()],
                ));
                list.extend(unix_messages());
                list.extend(unix_connect());
                list.extend(parvm_sandbox::thread_spawning());
            }
            Role::Device => {
                list.extend([
                    Any(libc::SYS_epoll_wait),
                    Any(libc::SYS_epoll_pwait),
                    Any(libc::SYS_epoll_ctl),
                    Any(libc::SYS_read),
                    Any(libc::SYS_pread64),
                    Any(libc::SYS_pwrite64),
                    Any(libc::SYS_preadv),
                    Any(libc::SYS_pwritev),
                    Any(libc::SYS_lseek),
                    Any(libc::SYS_fsync),
                    Any(libc::SYS_fdatasync),
                    // Discard and write-zeroes punch or zero ranges.
                    Any(libc::SYS_fallocate),
                    // A VIOS disk of a shared-memory partition served here
                    // (its private queue's memfd, set up again after the
                    // VIOS comes back).
                    Any(libc::SYS_memfd_create),
                    Any(libc::SYS_ftruncate),
                ]);
                list.extend(unix_messages());
                list.extend(unix_connect());
                list.extend(parvm_sandbox::thread_spawning());
            }
            Role::Control => {
                list.push(ArgIn(
                    libc::SYS_ioctl,
                    1,
                    vec![
                        KVM_SET_USER_MEMORY_REGION(),
                        KVM_IOEVENTFD(),
                        KVM_IRQFD(),
                        KVM_SET_GSI_ROUTING(),
                    ],
                ));
                list.extend(unix_messages());
                list.extend(unix_connect());
                list.extend(parvm_sandbox::thread_spawning());
            }
            Role::Pager => {
                list.push(ArgIn(
                    libc::SYS_ioctl,
                    1,
                    vec![
                        uffd::UFFDIO_WAKE(),
                        uffd::UFFDIO_COPY(),
                        uffd::UFFDIO_ZEROPAGE(),
                        uffd::UFFDIO_WRITEPROTECT(),
                    ],
                ));
                // Evicted pages leave the guest-RAM memfd.
                list.push(Any(libc::SYS_fallocate));
                // A new connection to the paging device: its private
                // memory (rings and buffers) and eventfds.
                list.push(Any(libc::SYS_memfd_create));
                list.push(Any(libc::SYS_ftruncate));
                list.extend(unix_messages());
                list.extend(unix_connect());
                // The driver's set-up watchdog (a thread per reconnect).
                list.extend(parvm_sandbox::thread_spawning());
            }
            Role::Dump => {
                // Guest RAM read from its memfd (holes found with lseek),
                // released after a crash once written.
                list.push(Any(libc::SYS_pread64));
                list.push(Any(libc::SYS_lseek));
                list.push(Any(libc::SYS_fallocate));
                // A new connection to the dump disk (its private memory).
                list.push(Any(libc::SYS_memfd_create));
                list.push(Any(libc::SYS_ftruncate));
                list.extend(unix_messages());
                list.extend(unix_connect());
                // The driver's set-up watchdog thread on a reconnect.
                list.extend(parvm_sandbox::thread_spawning());
            }
        }
        list
    }
}

/// Compiles every role's filter for `mode`; from then on [`apply`] installs
/// them. Called once, by `main`.
pub fn configure(mode: SeccompMode) -> Result<(), SeccompError> {
    parvm_sandbox::configure::<Role>(mode)
}
