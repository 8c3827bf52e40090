//! Per-vCPU CPUID: what KVM supports, filtered so each vCPU sees its own APIC
//! id, the partition's topology (one socket, one thread per core, `vcpus`
//! cores) and the hypervisor bit. Features to hide from every guest are
//! listed in [`HIDDEN_FEATURES`]: that is the one place to add to.
//!
//! Note for this machine (PVM): the guest's CPUID instruction does not follow
//! KVM_SET_CPUID2 for leaves 1, 7 and 0xD (see DESIGN.md); the filtering is
//! still right for VMX/SVM hosts.

use kvm_bindings::CpuId;

/// (leaf, subleaf or None for all, register, bit) of features never shown.
#[derive(Debug, Clone, Copy)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

pub const HIDDEN_FEATURES: &[(u32, Option<u32>, Reg, u32)] = &[
    // VMX: no nested virtualization.
    (1, None, Reg::Ecx, 5),
    // SMX.
    (1, None, Reg::Ecx, 6),
    // TSC_DEADLINE is kept; MONITOR/MWAIT are not emulated.
    (1, None, Reg::Ecx, 3),
    // Architectural performance monitoring is not offered (leaf 0xa zeroed).
    (1, None, Reg::Ecx, 15), // PDCM
];

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Filters `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU
/// `cpu_index` of a partition with `vcpus` vCPUs.
pub fn filter(cpuid: &mut CpuId, cpu_index: u8, vcpus: u8) {
    let apic_id = u32::from(cpu_index);
    let n = u32::from(vcpus);
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: APIC id [31:24], logical processors [23:16], CLFLUSH 8 qwords.
                e.ebx = (apic_id << 24) | (n.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing - 1.
                let cores = (n - 1).min(63);
                e.eax &= 0x3ff;
                if e.eax & 0x1f != 0 {
                    let cache_level = (e.eax >> 5) & 0x7;
                    let sharing = if cache_level >= 3 { n - 1 } else { 0 };
                    e.eax |= (cores << 26) | (sharing.min(0xfff) << 14);
                }
            }
            LEAF_PERFMON => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: all vCPUs in one package.
                        e.eax = bits_for(n);
                        e.ebx = n;
                        e.ecx = (2 << 8) | 1;
                    }
                    idx => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = idx & 0xff;
                    }
                }
            }
            _ => {}
        }
        for &(leaf, sub, reg, bit) in HIDDEN_FEATURES {
            if e.function == leaf && sub.is_none_or(|s| s == e.index) {
                let r = match reg {
                    Reg::Eax => &mut e.eax,
                    Reg::Ebx => &mut e.ebx,
                    Reg::Ecx => &mut e.ecx,
                    Reg::Edx => &mut e.edx,
                };
                *r &= !(1 << bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx: 1 << 5,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_topology_and_hidden_bits() {
        let mut c =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xa, 0)])
                .unwrap();
        filter(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[0].ecx & (1 << 5), 0, "VMX hidden");
        assert_eq!((s[2].eax, s[2].ebx, s[2].edx), (2, 4, 3));
        assert_eq!(s[3].eax, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
