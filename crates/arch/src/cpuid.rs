//! CPUID as the guest sees it: KVM's supported leaves, shaped by a CPU template and given each
//! vCPU's APIC id and the VM's topology (one socket, one thread per core).

use std::fmt;
use std::str::FromStr;

use ironvirt_hypervisor::kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Which CPU features the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuTemplate {
    /// Everything KVM supports on this host (`KVM_GET_SUPPORTED_CPUID` as is).
    #[default]
    Host,
    /// Hides what software-virtualized KVM cannot emulate and what differs most between hosts:
    /// CMPXCHG16B, POPCNT, XSAVE and the AVX/AVX-512/AMX families, FMA/F16C, SMAP, PKU, LA57,
    /// TSX, MPX, Intel PT and the PMU.
    Portable,
}

impl FromStr for CpuTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "portable" => Ok(Self::Portable),
            other => Err(format!("unknown CPU template '{other}' (expected 'host' or 'portable')")),
        }
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Portable => "portable",
        })
    }
}

// Feature bits, Intel SDM Vol. 2A "CPUID" tables 3-10 (leaf 1) and 3-8 (leaf 7).
mod bits {
    pub const L1_ECX_FMA: u32 = 1 << 12;
    pub const L1_ECX_CX16: u32 = 1 << 13;
    pub const L1_ECX_POPCNT: u32 = 1 << 23;
    pub const L1_ECX_XSAVE: u32 = 1 << 26;
    pub const L1_ECX_OSXSAVE: u32 = 1 << 27;
    pub const L1_ECX_AVX: u32 = 1 << 28;
    pub const L1_ECX_F16C: u32 = 1 << 29;
    pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
    pub const L1_EDX_HTT: u32 = 1 << 28;
    pub const L7_EBX_HLE: u32 = 1 << 4;
    pub const L7_EBX_AVX2: u32 = 1 << 5;
    pub const L7_EBX_RTM: u32 = 1 << 11;
    pub const L7_EBX_MPX: u32 = 1 << 14;
    pub const L7_EBX_SMAP: u32 = 1 << 20;
    pub const L7_EBX_PT: u32 = 1 << 25;
    /// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
    pub const L7_EBX_AVX512: u32 = (1 << 16)
        | (1 << 17)
        | (1 << 21)
        | (1 << 26)
        | (1 << 27)
        | (1 << 28)
        | (1 << 30)
        | (1 << 31);
    /// AVX-512 VBMI, PKU, OSPKE, VBMI2, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ, LA57.
    pub const L7_ECX_HIDE: u32 = (1 << 1)
        | (1 << 3)
        | (1 << 4)
        | (1 << 6)
        | (1 << 9)
        | (1 << 10)
        | (1 << 11)
        | (1 << 12)
        | (1 << 14)
        | (1 << 16);
    /// AVX-512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8.
    pub const L7_EDX_HIDE: u32 =
        (1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25);
    /// Leaf 7 subleaf 1: AVX-VNNI, AVX512-BF16, AMX-FP16, AVX-IFMA.
    pub const L7_1_EAX_HIDE: u32 = (1 << 4) | (1 << 5) | (1 << 21) | (1 << 23);
    /// Leaf 0x80000001 ECX: ABM/LZCNT, XOP, FMA4.
    pub const LX1_ECX_HIDE: u32 = (1 << 5) | (1 << 11) | (1 << 16);
}

/// Builds the CPUID of vCPU `apic_id` in a VM of `num_cpus` vCPUs from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, template: CpuTemplate, apic_id: u32, num_cpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        apply_topology(entry, apic_id, num_cpus);
        if template == CpuTemplate::Portable {
            apply_portable(entry);
        }
    }
    cpuid
}

/// Width of the APIC-id field needed for `n` ids.
fn id_bits(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

fn apply_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, num_cpus: u32) {
    match e.function {
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors per package, [15:8] CLFLUSH
            // line size in quadwords.
            let logical = num_cpus.next_power_of_two().min(255);
            e.ebx = (apic_id << 24) | (logical << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= bits::L1_ECX_HYPERVISOR;
            if num_cpus > 1 {
                e.edx |= bits::L1_EDX_HTT;
            } else {
                e.edx &= !bits::L1_EDX_HTT;
            }
        }
        // Deterministic cache parameters (type in EAX[4:0], 0 = no more caches): EAX[31:26]
        // cores per package - 1; each cache is shared by one thread (EAX[25:14] = 0).
        0x4 if e.eax & 0x1f != 0 => {
            let cores = num_cpus.next_power_of_two().min(64) - 1;
            e.eax = (e.eax & 0x3fff) | (cores << 26);
        }
        0xb | 0x1f => {
            // Extended topology (SDM Vol. 2A, leaf 0Bh): level 0 = SMT (1 thread), level 1 =
            // core (all vCPUs); EDX = x2APIC id on every subleaf.
            let (eax, ebx, ecx) = match e.index {
                0 => (0, 1, 1 << 8),
                1 => (id_bits(num_cpus), num_cpus, 1 | (2 << 8)),
                n => (0, 0, n & 0xff),
            };
            e.eax = eax;
            e.ebx = ebx;
            e.ecx = ecx;
            e.edx = apic_id;
        }
        0x8000_0008 => {
            // AMD: ECX[7:0] = number of cores - 1, [15:12] = APIC id size.
            e.ecx = (e.ecx & !0xf0ff) | (num_cpus - 1) | (id_bits(num_cpus) << 12);
        }
        _ => {}
    }
}

fn apply_portable(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (0x1, _) => {
            e.ecx &= !(bits::L1_ECX_FMA
                | bits::L1_ECX_CX16
                | bits::L1_ECX_POPCNT
                | bits::L1_ECX_XSAVE
                | bits::L1_ECX_OSXSAVE
                | bits::L1_ECX_AVX
                | bits::L1_ECX_F16C);
        }
        (0x7, 0) => {
            e.ebx &= !(bits::L7_EBX_HLE
                | bits::L7_EBX_AVX2
                | bits::L7_EBX_RTM
                | bits::L7_EBX_MPX
                | bits::L7_EBX_SMAP
                | bits::L7_EBX_PT
                | bits::L7_EBX_AVX512);
            e.ecx &= !bits::L7_ECX_HIDE;
            e.edx &= !bits::L7_EDX_HIDE;
        }
        (0x7, 1) => e.eax &= !bits::L7_1_EAX_HIDE,
        // XSAVE state enumeration, architectural PMU, Intel PT, AMX tiles: nothing to report.
        (0xa, _) | (0xd, _) | (0x14, _) | (0x1d, _) | (0x1e, _) => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        (0x8000_0001, _) => e.ecx &= !bits::LX1_ECX_HIDE,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    fn host_like() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0, 0x906ea, 0, !bits::L1_ECX_HYPERVISOR, u32::MAX),
            entry(0x7, 0, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0xd, 0, 7, 0x340, 0x340, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn portable_hides_what_software_kvm_cannot_emulate() {
        let c = vcpu_cpuid(&host_like(), CpuTemplate::Portable, 0, 1);
        let l1 = find(&c, 1, 0);
        for bit in [bits::L1_ECX_CX16, bits::L1_ECX_POPCNT, bits::L1_ECX_XSAVE, bits::L1_ECX_AVX] {
            assert_eq!(l1.ecx & bit, 0);
        }
        assert_ne!(l1.ecx & bits::L1_ECX_HYPERVISOR, 0);
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx & (bits::L7_EBX_SMAP | bits::L7_EBX_AVX2 | bits::L7_EBX_AVX512), 0);
        assert_eq!(find(&c, 0xd, 0).eax, 0);
    }

    #[test]
    fn host_keeps_features() {
        let c = vcpu_cpuid(&host_like(), CpuTemplate::Host, 0, 1);
        assert_ne!(find(&c, 1, 0).ecx & bits::L1_ECX_CX16, 0);
        assert_ne!(find(&c, 7, 0).ebx & bits::L7_EBX_SMAP, 0);
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_vm_topology() {
        let c = vcpu_cpuid(&host_like(), CpuTemplate::Host, 5, 8);
        assert_eq!(find(&c, 1, 0).ebx >> 24, 5);
        assert_eq!((find(&c, 1, 0).ebx >> 16) & 0xff, 8);
        assert_eq!(find(&c, 0xb, 0).edx, 5);
        assert_eq!(find(&c, 0xb, 1).ebx, 8);
        assert_eq!(find(&c, 0xb, 1).eax, 3);
    }

    #[test]
    fn template_names_parse_and_print() {
        assert_eq!("portable".parse::<CpuTemplate>().unwrap(), CpuTemplate::Portable);
        assert_eq!(CpuTemplate::Host.to_string(), "host");
        assert!("fast".parse::<CpuTemplate>().is_err());
    }
}
