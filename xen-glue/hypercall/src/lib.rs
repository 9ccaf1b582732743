//! # xen-hypercall — the unsafe edge of `xen-glue`
//!
//! HVM and PVH domains call Xen with `VMCALL` (Intel) or `VMMCALL` (AMD): hypercall number in RAX,
//! arguments in RDI, RSI, RDX, R10, R8, result in RAX (Xen's `arch-x86/xen-x86_64.h`). No hypercall
//! page is needed. This crate holds the instruction, Xen detection through CPUID, and typed
//! wrappers whose arguments are plain values or structures this crate builds itself, so that no
//! caller needs `unsafe` for them. Memory that Xen writes on a caller's behalf (grant tables, the
//! shared-info page) is mapped through the wrappers that take physical frame numbers; what lives in
//! those pages is read with volatile accessors by their owners.
//!
//! Everything compiles on the host too (for `cargo test` of the numbers), but only calls Xen when
//! [`Xen::detect`] found it.
#![cfg_attr(not(test), no_std)]

pub mod evtchn;
pub mod grant;
pub mod mem;

pub use evtchn::{Port, SharedInfo};
pub use grant::{CopyPtr, GntCopy, GrantRef, GrantTableV1};
pub use mem::{ForeignMem, MappedGrant};

/// Hypercall numbers (`xen.h`).
pub mod nr {
    /// `__HYPERVISOR_memory_op`.
    pub const MEMORY_OP: u64 = 12;
    /// `__HYPERVISOR_xen_version`.
    pub const XEN_VERSION: u64 = 17;
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: u64 = 18;
    /// `__HYPERVISOR_grant_table_op`.
    pub const GRANT_TABLE_OP: u64 = 20;
    /// `__HYPERVISOR_vcpu_op`.
    pub const VCPU_OP: u64 = 24;
    /// `__HYPERVISOR_sched_op`.
    pub const SCHED_OP: u64 = 29;
    /// `__HYPERVISOR_event_channel_op`.
    pub const EVENT_CHANNEL_OP: u64 = 32;
    /// `__HYPERVISOR_hvm_op`.
    pub const HVM_OP: u64 = 34;
}

/// `SCHEDOP_*` commands and `SHUTDOWN_*` reasons (`sched.h`).
pub mod sched {
    /// `SCHEDOP_yield`.
    pub const YIELD: u64 = 0;
    /// `SCHEDOP_block`.
    pub const BLOCK: u64 = 1;
    /// `SCHEDOP_shutdown`.
    pub const SHUTDOWN: u64 = 2;
    /// `SHUTDOWN_poweroff`.
    pub const POWEROFF: u32 = 0;
    /// `SHUTDOWN_reboot`.
    pub const REBOOT: u32 = 1;
    /// `SHUTDOWN_crash`.
    pub const CRASH: u32 = 3;
}

/// `HVMOP_*` and `HVM_PARAM_*` (`hvm/hvm_op.h`, `hvm/params.h`).
pub mod hvm {
    /// `HVMOP_set_param`.
    pub const SET_PARAM: u64 = 0;
    /// `HVMOP_get_param`.
    pub const GET_PARAM: u64 = 1;
    /// `HVM_PARAM_CALLBACK_IRQ`.
    pub const PARAM_CALLBACK_IRQ: u32 = 0;
    /// `HVM_PARAM_STORE_PFN`.
    pub const PARAM_STORE_PFN: u32 = 1;
    /// `HVM_PARAM_STORE_EVTCHN`.
    pub const PARAM_STORE_EVTCHN: u32 = 2;
    /// `HVM_PARAM_CONSOLE_PFN`.
    pub const PARAM_CONSOLE_PFN: u32 = 17;
    /// `HVM_PARAM_CONSOLE_EVTCHN`.
    pub const PARAM_CONSOLE_EVTCHN: u32 = 18;
    /// `DOMID_SELF`.
    pub const DOMID_SELF: u16 = 0x7ff0;
}

/// A Xen error (`-errno` from a hypercall), e.g. `-EPERM` = -1, `-EINVAL` = -22.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenError(pub i64);

/// Turns a hypercall's return value into a result.
pub fn check(ret: i64) -> Result<u64, XenError> {
    if ret < 0 { Err(XenError(ret)) } else { Ok(ret as u64) }
}

/// Which instruction enters the hypervisor on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallInstruction {
    /// Intel VT-x.
    Vmcall,
    /// AMD-V (and Hygon).
    Vmmcall,
}

impl CallInstruction {
    /// Chooses by the CPUID vendor string (leaf 0: EBX, EDX, ECX).
    pub fn for_vendor(vendor: &[u8; 12]) -> CallInstruction {
        match vendor {
            b"AuthenticAMD" | b"HygonGenuine" => CallInstruction::Vmmcall,
            _ => CallInstruction::Vmcall,
        }
    }
}

/// Xen as seen from this domain: present, with its CPUID base and call instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xen {
    /// CPUID leaf where Xen's signature was found (0x40000000, or +0x100 with Viridian).
    pub cpuid_base: u32,
    /// VMCALL or VMMCALL.
    pub instruction: CallInstruction,
}

/// The CPUID instruction: (eax, ebx, ecx, edx) of `leaf`/`subleaf`.
#[cfg(target_arch = "x86_64")]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID exists on every x86-64 CPU and only writes registers; RBX (reserved by LLVM)
    // is preserved through a scratch register.
    unsafe {
        core::arch::asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") subleaf => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        )
    };
    [a, b, c, d]
}

#[cfg(target_arch = "x86_64")]
impl Xen {
    /// Finds Xen through CPUID, or `None` when not running on Xen.
    pub fn detect() -> Option<Xen> {
        if cpuid(1, 0)[2] & (1 << 31) == 0 {
            return None;
        }
        let cpuid_base = (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&base| {
            let [max, b, c, d] = cpuid(base, 0);
            max >= base + 2
                && b.to_le_bytes() == *b"XenV"
                && c.to_le_bytes() == *b"MMXe"
                && d.to_le_bytes() == *b"nVMM"
        })?;
        let [_, b, c, d] = cpuid(0, 0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&b.to_le_bytes());
        vendor[4..8].copy_from_slice(&d.to_le_bytes());
        vendor[8..12].copy_from_slice(&c.to_le_bytes());
        Some(Xen { cpuid_base, instruction: CallInstruction::for_vendor(&vendor) })
    }

    /// Xen's version as (major, minor), from CPUID leaf base+1.
    pub fn version(&self) -> (u16, u16) {
        let eax = cpuid(self.cpuid_base + 1, 0)[0];
        ((eax >> 16) as u16, eax as u16)
    }

    /// The guest TSC frequency in kHz (CPUID leaf base+3, sub-leaf 0, ECX), 0 if unknown.
    pub fn tsc_khz(&self) -> u32 {
        cpuid(self.cpuid_base + 3, 0)[2]
    }

    /// This domain's id, when Xen reports it: CPUID leaf base+4, ECX valid when EAX bit 4
    /// (`XEN_HVM_CPUID_DOMID_PRESENT`) is set. (Bit 3 announces the vCPU id in EBX instead.)
    pub fn domid(&self) -> Option<u16> {
        let [eax, _, ecx, _] = cpuid(self.cpuid_base + 4, 0);
        (eax & (1 << 4) != 0).then_some(ecx as u16)
    }

    /// Issues hypercall `op` with up to five register arguments.
    ///
    /// # Safety
    /// The arguments must be valid for `op` as Xen's public headers define it: every pointer must
    /// point to memory of the right type and size that stays valid (and, for outputs, writable and
    /// not otherwise borrowed) for the duration of the call.
    pub unsafe fn call(&self, op: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
        let ret: i64;
        match self.instruction {
            // SAFETY: the caller guarantees the arguments' validity for `op`; Xen preserves all
            // registers but RAX (and the argument registers it may clobber, declared here).
            CallInstruction::Vmcall => unsafe {
                core::arch::asm!(
                    "vmcall",
                    inlateout("rax") op as i64 => ret,
                    inlateout("rdi") a1 => _,
                    inlateout("rsi") a2 => _,
                    inlateout("rdx") a3 => _,
                    inlateout("r10") a4 => _,
                    inlateout("r8") a5 => _,
                    options(nostack),
                )
            },
            // SAFETY: as above.
            CallInstruction::Vmmcall => unsafe {
                core::arch::asm!(
                    "vmmcall",
                    inlateout("rax") op as i64 => ret,
                    inlateout("rdi") a1 => _,
                    inlateout("rsi") a2 => _,
                    inlateout("rdx") a3 => _,
                    inlateout("r10") a4 => _,
                    inlateout("r8") a5 => _,
                    options(nostack),
                )
            },
        }
        ret
    }

    /// `SCHEDOP_shutdown` with `reason` (a [`sched`] constant). Returns only if Xen refused.
    pub fn shutdown(&self, reason: u32) -> XenError {
        let arg = reason;
        // SAFETY: `sched_shutdown` is one `unsigned int`; `arg` lives across the call.
        let ret = unsafe { self.call(nr::SCHED_OP, sched::SHUTDOWN, &arg as *const u32 as u64, 0, 0, 0) };
        XenError(ret)
    }

    /// `SCHEDOP_yield`.
    pub fn yield_now(&self) {
        // SAFETY: SCHEDOP_yield takes no argument.
        unsafe { self.call(nr::SCHED_OP, sched::YIELD, 0, 0, 0, 0) };
    }

    /// `HVMOP_get_param` for this domain.
    pub fn hvm_get_param(&self, index: u32) -> Result<u64, XenError> {
        let mut param = HvmParam { domid: hvm::DOMID_SELF, _pad: 0, index, value: 0 };
        // SAFETY: `xen_hvm_param` is exactly `HvmParam` (asserted below); it lives across the call.
        let ret = unsafe {
            self.call(nr::HVM_OP, hvm::GET_PARAM, &mut param as *mut HvmParam as u64, 0, 0, 0)
        };
        check(ret).map(|_| param.value)
    }

    /// `HVMOP_set_param` for this domain.
    pub fn hvm_set_param(&self, index: u32, value: u64) -> Result<(), XenError> {
        let param = HvmParam { domid: hvm::DOMID_SELF, _pad: 0, index, value };
        // SAFETY: as for `hvm_get_param`.
        let ret = unsafe {
            self.call(nr::HVM_OP, hvm::SET_PARAM, &param as *const HvmParam as u64, 0, 0, 0)
        };
        check(ret).map(|_| ())
    }
}

/// `XENMEM_add_to_physmap` and its spaces (`memory.h`).
pub mod memory {
    /// `XENMEM_add_to_physmap`.
    pub const ADD_TO_PHYSMAP: u64 = 7;
    /// `XENMAPSPACE_shared_info`.
    pub const SPACE_SHARED_INFO: u32 = 0;
    /// `XENMAPSPACE_grant_table`.
    pub const SPACE_GRANT_TABLE: u32 = 1;
}

#[repr(C)]
struct AddToPhysmap {
    domid: u16,
    size: u16,
    space: u32,
    idx: u64,
    gpfn: u64,
}

const _: () = assert!(core::mem::size_of::<AddToPhysmap>() == 24);

#[cfg(target_arch = "x86_64")]
impl Xen {
    /// `XENMEM_add_to_physmap`: makes page `idx` of `space` appear at guest frame `gpfn` of this
    /// domain (replacing whatever RAM was there).
    ///
    /// # Safety
    /// Nothing may use frame `gpfn` as ordinary memory any more: its contents change to Xen's page.
    pub unsafe fn add_to_physmap(&self, space: u32, idx: u64, gpfn: u64) -> Result<(), XenError> {
        let arg = AddToPhysmap { domid: hvm::DOMID_SELF, size: 0, space, idx, gpfn };
        // SAFETY: `xen_add_to_physmap` is exactly `AddToPhysmap`; it lives across the call; the
        // caller gives up the frame.
        let ret = unsafe {
            self.call(nr::MEMORY_OP, memory::ADD_TO_PHYSMAP, &arg as *const AddToPhysmap as u64, 0, 0, 0)
        };
        check(ret).map(|_| ())
    }
}

/// `struct xen_hvm_param`: domid u16, pad, index u32, value u64.
#[repr(C)]
struct HvmParam {
    domid: u16,
    _pad: u16,
    index: u32,
    value: u64,
}

const _: () = assert!(core::mem::size_of::<HvmParam>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_follows_vendor() {
        assert_eq!(CallInstruction::for_vendor(b"AuthenticAMD"), CallInstruction::Vmmcall);
        assert_eq!(CallInstruction::for_vendor(b"HygonGenuine"), CallInstruction::Vmmcall);
        assert_eq!(CallInstruction::for_vendor(b"GenuineIntel"), CallInstruction::Vmcall);
    }

    #[test]
    fn errors_are_negative_returns() {
        assert_eq!(check(0), Ok(0));
        assert_eq!(check(7), Ok(7));
        assert_eq!(check(-22), Err(XenError(-22)));
    }

    #[test]
    fn host_is_not_xen_or_is_detected_consistently() {
        // On a CI host this is normally None; if the host is itself a Xen guest, the base must be
        // one of the leaves Xen uses.
        if let Some(x) = Xen::detect() {
            assert_eq!(x.cpuid_base & 0xff, 0);
        }
    }
}
