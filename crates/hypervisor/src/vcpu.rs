//! One vCPU file descriptor and its run loop step.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::exit::{EmulationFailure, SUBERROR_EMULATION};
use crate::{ioctl_err, Result, VcpuExit};

/// Flag in `kvm_run.emulation_failure.flags`: the instruction bytes are valid.
const EMULATION_FLAG_INSTRUCTION_BYTES: u64 = 1;

/// A vCPU, driven by one thread.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, id: u32) -> Self {
        Self { fd, id }
    }

    /// The vCPU index (equal to its APIC id).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets the CPUID leaves the guest sees.
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl_err("KVM_SET_CPUID2"))
    }

    /// Sets MSRs; fails if KVM accepted fewer than all of them.
    pub fn set_msrs(&self, msrs: &Msrs) -> Result<()> {
        let n = self.fd.set_msrs(msrs).map_err(ioctl_err("KVM_SET_MSRS"))?;
        if n != msrs.as_slice().len() {
            let bad = msrs.as_slice().get(n).map_or(0, |e| e.index);
            log::warn!("vCPU {}: KVM rejected MSR {bad:#x}; continuing without it", self.id);
        }
        Ok(())
    }

    /// General-purpose registers.
    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(ioctl_err("KVM_GET_REGS"))
    }

    /// Sets the general-purpose registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(ioctl_err("KVM_SET_REGS"))
    }

    /// Special registers (segments, control registers, EFER).
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))
    }

    /// Sets the special registers.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(ioctl_err("KVM_SET_SREGS"))
    }

    /// Sets the x87/SSE state.
    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(ioctl_err("KVM_SET_FPU"))
    }

    /// The in-kernel local APIC's registers.
    pub fn lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(ioctl_err("KVM_GET_LAPIC"))
    }

    /// Sets the in-kernel local APIC's registers.
    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd.set_lapic(lapic).map_err(ioctl_err("KVM_SET_LAPIC"))
    }

    /// The multiprocessing state (runnable, waiting for SIPI, halted...).
    pub fn mp_state(&self) -> Result<kvm_mp_state> {
        self.fd.get_mp_state().map_err(ioctl_err("KVM_GET_MP_STATE"))
    }

    /// Makes the next (or current, if a signal interrupts it) `KVM_RUN` return at once.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// Runs the vCPU until the next exit that needs userspace.
    pub fn run(&mut self) -> Result<VcpuExit<'_>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(ioctl_err("KVM_RUN")(e)),
        };
        Ok(match exit {
            KvmExit::IoIn(port, data) => VcpuExit::IoIn { port, data },
            KvmExit::IoOut(port, data) => VcpuExit::IoOut { port, data },
            KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead { addr, data },
            KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite { addr, data },
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::SystemEvent(kind, _) => VcpuExit::SystemEvent(kind),
            KvmExit::FailEntry(reason, _) => VcpuExit::FailEntry(reason),
            KvmExit::Intr => VcpuExit::Interrupted,
            KvmExit::InternalError => VcpuExit::InternalError,
            KvmExit::Unknown => VcpuExit::Other("unknown"),
            KvmExit::Exception => VcpuExit::Other("exception"),
            KvmExit::Debug(_) => VcpuExit::Other("debug"),
            KvmExit::IrqWindowOpen => VcpuExit::Other("irq window open"),
            KvmExit::Nmi => VcpuExit::Other("nmi"),
            KvmExit::IoapicEoi(_) => VcpuExit::Other("ioapic eoi"),
            KvmExit::Hypercall(_) => VcpuExit::Other("hypercall"),
            KvmExit::X86Rdmsr(_) => VcpuExit::Other("rdmsr"),
            KvmExit::X86Wrmsr(_) => VcpuExit::Other("wrmsr"),
            _ => VcpuExit::Other("unsupported exit reason"),
        })
    }

    /// Reads the details of the `KVM_EXIT_INTERNAL_ERROR` the last [`Vcpu::run`] returned as
    /// [`VcpuExit::InternalError`], from the shared `kvm_run` page.
    pub fn internal_error(&mut self) -> EmulationFailure {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, so the `internal` /
        // `emulation_failure` members of the union are the ones it wrote; both are plain
        // integers, valid for any bit pattern.
        let (suberror, flags, insn_size, bytes) = unsafe {
            let e = run.__bindgen_anon_1.emulation_failure;
            let insn = e.__bindgen_anon_1.__bindgen_anon_1;
            (e.suberror, e.flags, insn.insn_size, insn.insn_bytes)
        };
        let insn =
            if suberror == SUBERROR_EMULATION && flags & EMULATION_FLAG_INSTRUCTION_BYTES != 0 {
                bytes[..usize::from(insn_size).min(bytes.len())].to_vec()
            } else {
                Vec::new()
            };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        EmulationFailure { suberror, rip, insn }
    }
}
