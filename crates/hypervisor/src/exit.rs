//! Why `KVM_RUN` returned, as a plain enum.

use std::fmt;

/// The reason a vCPU left `KVM_RUN`. Data slices point into the vCPU's shared `kvm_run` page
/// and are valid until the next run.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// Port input: fill `data` (1, 2 or 4 bytes).
    IoIn {
        /// The port.
        port: u16,
        /// Where the value read goes.
        data: &'a mut [u8],
    },
    /// Port output.
    IoOut {
        /// The port.
        port: u16,
        /// The value written.
        data: &'a [u8],
    },
    /// MMIO read: fill `data`.
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Where the value read goes.
        data: &'a mut [u8],
    },
    /// MMIO write.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The value written.
        data: &'a [u8],
    },
    /// The guest halted with the in-kernel irqchip absent (should not happen here).
    Hlt,
    /// Triple fault or similar: the CPU shut down. x86 machines reset on it.
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` (shutdown, reset, crash) with its type.
    SystemEvent(u32),
    /// KVM could not handle the guest, most often an instruction its emulator lacks; the
    /// details come from [`crate::Vcpu::internal_error`].
    InternalError,
    /// VM entry failed with a hardware reason code.
    FailEntry(u64),
    /// `KVM_RUN` was interrupted by a signal (a kick) or `immediate_exit`.
    Interrupted,
    /// Any other exit reason, by number.
    Other(&'static str),
}

/// `KVM_INTERNAL_ERROR_EMULATION`.
pub const SUBERROR_EMULATION: u32 = 1;

/// What KVM said when it gave up on the guest (`KVM_EXIT_INTERNAL_ERROR`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulationFailure {
    /// The suberror (1 = emulation failure).
    pub suberror: u32,
    /// Guest RIP at the failure (filled by the vCPU from its registers).
    pub rip: u64,
    /// The instruction bytes KVM reported (empty when it reported none).
    pub insn: Vec<u8>,
}

impl EmulationFailure {
    /// Decodes the instruction into a name and the feature a CPU template can hide to keep
    /// guests off it, for the known fatal cases on software-virtualized KVM.
    pub fn diagnose(&self) -> Option<(&'static str, &'static str)> {
        diagnose_insn(&self.insn)
    }
}

impl fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.suberror == SUBERROR_EMULATION {
            "instruction KVM cannot emulate".to_string()
        } else {
            format!("KVM internal error (suberror {})", self.suberror)
        };
        write!(f, "{kind} at RIP {:#x}", self.rip)?;
        if !self.insn.is_empty() {
            let bytes: Vec<String> = self.insn.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, ", bytes {}", bytes.join(" "))?;
        }
        if let Some((name, cause)) = self.diagnose() {
            write!(f, " ({name}); likely cause: {cause}")?;
        }
        Ok(())
    }
}

/// Skips legacy prefixes and REX, returning (lock prefix seen, rep prefix seen, rest).
fn strip_prefixes(insn: &[u8]) -> (bool, bool, &[u8]) {
    let (mut lock, mut rep, mut i) = (false, false, 0);
    while let Some(&b) = insn.get(i) {
        match b {
            0xf0 => lock = true,
            0xf3 | 0xf2 => rep = true,
            0x66 | 0x67 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            0x40..=0x4f => {}
            _ => break,
        }
        i += 1;
    }
    (lock, rep, &insn[i..])
}

fn diagnose_insn(insn: &[u8]) -> Option<(&'static str, &'static str)> {
    let (_lock, rep, op) = strip_prefixes(insn);
    let rex_w = insn.iter().take_while(|b| !matches!(b, 0x0f)).any(|b| (0x48..=0x4f).contains(b));
    let modrm_reg = |m: u8| (m >> 3) & 7;
    match op {
        [0x0f, 0xc7, m, ..] if modrm_reg(*m) == 1 && rex_w => Some((
            "cmpxchg16b",
            "CPUID exposes cx16; use --cpu-template portable (or boot the guest with clearcpuid=cx16)",
        )),
        [0x0f, 0xae, m, ..] if matches!(modrm_reg(*m), 4 | 5) && *m < 0xc0 => Some((
            "xsave/xrstor",
            "CPUID exposes XSAVE; use --cpu-template portable (or boot the guest with noxsave)",
        )),
        [0x0f, 0x01, 0xca] | [0x0f, 0x01, 0xca, ..] | [0x0f, 0x01, 0xcb, ..] => Some((
            "clac/stac",
            "CPUID exposes SMAP; use --cpu-template portable (or clearcpuid=smap)",
        )),
        [0x0f, 0xb8, ..] if rep => Some((
            "popcnt",
            "CPUID exposes popcnt; use --cpu-template portable (or clearcpuid=popcnt)",
        )),
        [0xcc, ..] => Some((
            "int3",
            "the guest executed a breakpoint (Linux's int3 self-test or triple-fault reboot); no CPUID bit hides it",
        )),
        [0x9b, ..] => Some((
            "fwait",
            "the guest kernel issues fwait (fpu__drop); no CPUID bit hides it",
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(bytes: &[u8]) -> Option<&'static str> {
        diagnose_insn(bytes).map(|(n, _)| n)
    }

    #[test]
    fn recognises_the_instructions_software_kvm_cannot_emulate() {
        assert_eq!(name(&[0xf0, 0x49, 0x0f, 0xc7, 0x49, 0x20]), Some("cmpxchg16b"));
        assert_eq!(name(&[0x48, 0x0f, 0xae, 0x2f]), Some("xsave/xrstor"));
        assert_eq!(name(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7]), Some("popcnt"));
        assert_eq!(name(&[0x0f, 0x01, 0xca]), Some("clac/stac"));
        assert_eq!(name(&[0xcc]), Some("int3"));
        assert_eq!(name(&[0x9b]), Some("fwait"));
    }

    #[test]
    fn leaves_other_instructions_undiagnosed() {
        assert_eq!(name(&[0x0f, 0xc7, 0x08]), None, "cmpxchg8b without REX.W");
        assert_eq!(name(&[0x0f, 0xae, 0xf0]), None, "mfence");
        assert_eq!(name(&[0x0f, 0xb8]), None, "jmpe without f3");
        assert_eq!(name(&[]), None);
        assert_eq!(name(&[0xf0; 20]), None, "prefixes only");
    }

    #[test]
    fn display_names_bytes_rip_and_cause() {
        let f =
            EmulationFailure { suberror: 1, rip: 0x1000, insn: vec![0xf3, 0x48, 0x0f, 0xb8, 0x04] };
        let text = f.to_string();
        assert!(text.contains("RIP 0x1000"), "{text}");
        assert!(text.contains("f3 48 0f b8 04"), "{text}");
        assert!(text.contains("popcnt") && text.contains("--cpu-template portable"), "{text}");
    }
}
