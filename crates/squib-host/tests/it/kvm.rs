//! A tiny KVM guest whose RAM is served lazily by the pager: KVM's own accesses to guest
//! memory (instruction fetches and data reads through the EPT) raise userfaultfd faults, so the
//! guest computing the right checksum over its memory proves every page arrived intact.
//!
//! The guest is 16-bit real-mode code in a 64 KiB slot at guest-physical 0xFFFF_0000, where an
//! x86 vCPU starts after reset (CS base 0xFFFF_0000, IP 0xFFF0): it jumps to offset 0, sums the
//! 16-bit words of [0x1000, 0xF000) through a CS override, writes the sum to port 0x10 and
//! halts. Skips (saying why) without a usable /dev/kvm.
//!
//! The KVM ioctls are test scaffolding, written out here: the crate itself needs none.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use squib_host::PagerConfig;
use workspace_tests::support::skip;

use crate::pages::require_uffd;
use crate::support::{Restore, quiet, within};

const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_CREATE_VM: u64 = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xAE04;
const KVM_CREATE_VCPU: u64 = 0xAE41;
const KVM_SET_TSS_ADDR: u64 = 0xAE47;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_AE46;
const KVM_RUN: u64 = 0xAE80;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;
const SLOT_GPA: u64 = 0xFFFF_0000;
const SLOT_SIZE: usize = 0x1_0000;

/// `struct kvm_userspace_memory_region`.
#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}
const _: () = assert!(std::mem::size_of::<MemoryRegion>() == 32);

fn ioctl(fd: &OwnedFd, req: u64, arg: u64) -> std::io::Result<i32> {
    // SAFETY: every request used here takes an integer argument or a pointer to a live,
    // correctly sized structure owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by a KVM ioctl and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The guest image: code at 0, data in [0x1000, 0xF000), the reset jump at 0xFFF0.
fn guest_image() -> (Vec<u8>, u16) {
    let mut img = vec![0u8; SLOT_SIZE];
    let code: [u8; 23] = [
        0xBE, 0x00, 0x10, // mov si, 0x1000
        0x31, 0xC0, // xor ax, ax
        0x2E, 0x03, 0x04, // L: add ax, cs:[si]
        0x83, 0xC6, 0x02, // add si, 2
        0x81, 0xFE, 0x00, 0xF0, // cmp si, 0xF000
        0x75, 0xF4, // jne L
        0xBA, 0x10, 0x00, // mov dx, 0x10
        0xEF, // out dx, ax
        0xF4, // hlt
        0xF4, // hlt
    ];
    img[..code.len()].copy_from_slice(&code);
    img[0xFFF0..0xFFF3].copy_from_slice(&[0xE9, 0x0D, 0x00]); // jmp 0x0000
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    for (i, b) in img[0x1000..0xF000].iter_mut().enumerate() {
        // Every fourth page stays zero (served as the zero page).
        if (i / 4096) % 4 == 3 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let sum = img[0x1000..0xF000].chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    (img, sum)
}

/// Runs the vCPU until HLT; returns the word written to port 0x10.
fn run_guest(mem_addr: u64) -> Result<u16, String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| e.to_string())?;
    let kvm = OwnedFd::from(kvm);
    let vm = owned(ioctl(&kvm, KVM_CREATE_VM, 0).map_err(|e| format!("KVM_CREATE_VM: {e}"))?);
    ioctl(&vm, KVM_SET_TSS_ADDR, 0xFFFB_D000).map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
    let region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: SLOT_GPA,
        memory_size: SLOT_SIZE as u64,
        userspace_addr: mem_addr,
    };
    ioctl(&vm, KVM_SET_USER_MEMORY_REGION, (&raw const region) as u64)
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = owned(ioctl(&vm, KVM_CREATE_VCPU, 0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?);
    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0).map_err(|e| e.to_string())? as usize;
    // SAFETY: maps the vCPU's shared kvm_run area, as KVM documents; checked for failure below.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    if run == libc::MAP_FAILED {
        return Err(format!("mmap kvm_run: {}", std::io::Error::last_os_error()));
    }
    let run = run.cast::<u8>();
    let read32 = |off: usize| -> u32 {
        let field = run.wrapping_add(off).cast::<u32>();
        // SAFETY: `off + 4` lies inside the kvm_run mapping of `run_size` bytes; KVM is not
        // running the vCPU while this thread reads it.
        unsafe { std::ptr::read_unaligned(field) }
    };
    let mut result = Err("the guest halted without writing its checksum".to_string());
    for _ in 0..16 {
        ioctl(&vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
        match read32(8) {
            KVM_EXIT_IO => {
                // struct kvm_run.io at offset 32: direction u8, size u8, port u16, count u32,
                // data_offset u64.
                let port = (read32(32) >> 16) as u16;
                let size = (read32(32) >> 8) as u8;
                let data_offset = read32(40) as usize;
                if port == 0x10 && size == 2 {
                    result = Ok(read32(data_offset) as u16);
                }
            }
            KVM_EXIT_HLT => break,
            other => {
                result = Err(format!("unexpected KVM exit reason {other}"));
                break;
            }
        }
    }
    // SAFETY: unmaps the kvm_run area mapped above; nothing refers to it any more.
    unsafe { libc::munmap(run.cast(), run_size) };
    result
}

fn kvm_usable() -> Result<(), String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let kvm = OwnedFd::from(kvm);
    match ioctl(&kvm, KVM_GET_API_VERSION, 0) {
        Ok(12) => Ok(()),
        Ok(v) => Err(format!("KVM API version {v}, expected 12")),
        Err(e) => Err(format!("KVM_GET_API_VERSION: {e}")),
    }
}

#[test]
fn a_kvm_guest_on_lazily_served_memory_computes_the_snapshot_checksum() {
    let name = "a_kvm_guest_on_lazily_served_memory_computes_the_snapshot_checksum";
    require_uffd!(name);
    if let Err(why) = kvm_usable() {
        return skip(name, &why);
    }
    let (image, expected) = guest_image();
    let Restore { mem, pager, .. } = Restore::serving(image)
        .config(PagerConfig {
            readahead_max: 0,
            ..quiet()
        })
        .start();
    let addr = mem.as_ptr() as u64;
    let got = within(Duration::from_secs(30), "the KVM guest", move || {
        run_guest(addr)
    });
    let s = pager.stats();
    pager.finish();
    drop(mem);
    match got {
        Ok(sum) => {
            assert_eq!(sum, expected, "guest checksum");
            // Every page the guest read arrived through a fault: code, data and reset vector.
            assert!(s.faults >= 16, "{s:?}");
            assert_eq!(s.pages_copied + s.zero_pages, 16, "{s:?}");
            assert!(s.zero_pages >= 3, "{s:?}");
        }
        Err(e) if e.contains("KVM_RUN") || e.contains("exit reason") => {
            panic!("guest failed: {e}; stats {s:?}")
        }
        Err(e) => skip(name, &e),
    }
}
