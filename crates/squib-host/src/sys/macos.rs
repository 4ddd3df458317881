//! macOS: the Mach exception-port server.
//!
//! NOTE: this file is compiled and linted for `aarch64-apple-darwin` by `cargo xtask ci` (the
//! `macOS build check` stage) but has not yet run on macOS: the build machines are Linux. It
//! is written against `mach2` 0.7 and the MIG message layouts of `mach_exc.defs` (sizes checked
//! below at compile time); the policy it drives ([`crate::mach::ExceptionPolicy`]) is portable
//! and tested on Linux.
//!
//! The server thread owns a receive right, swaps it in as the task's `EXC_BAD_ACCESS` handler
//! (`EXCEPTION_DEFAULT | MACH_EXCEPTION_CODES`), and loops on `mach_msg` with a receive timeout
//! of `poll_interval`. Each `mach_exception_raise` request (id 2405) carries the faulting
//! address in `code[1]`: in a registered region, the page is fetched and installed atomically
//! (`mach_vm_remap` of a filled scratch page over the target, `VM_FLAGS_OVERWRITE`) and the
//! reply says `KERN_SUCCESS`, so the thread retries the access; otherwise the request is
//! forwarded to the prior handler and its answer relayed. Every timeout runs the drift check.

use std::mem::size_of;
use std::thread::JoinHandle;

use mach2::exception_types::{EXC_MASK_BAD_ACCESS, EXCEPTION_DEFAULT, MACH_EXCEPTION_CODES};
use mach2::kern_return::{KERN_FAILURE, KERN_SUCCESS, kern_return_t};
use mach2::mach_port::{mach_port_allocate, mach_port_deallocate, mach_port_insert_right};
use mach2::message::{
    MACH_MSG_TYPE_COPY_SEND, MACH_MSG_TYPE_MAKE_SEND, MACH_MSG_TYPE_MAKE_SEND_ONCE,
    MACH_MSGH_BITS_REMOTE_MASK, MACH_RCV_MSG, MACH_RCV_TIMED_OUT, MACH_RCV_TIMEOUT, MACH_SEND_MSG,
    mach_msg, mach_msg_header_t,
};
use mach2::ndr::NDR_record_t;
use mach2::port::{MACH_PORT_NULL, MACH_PORT_RIGHT_RECEIVE, mach_port_t};
use mach2::traps::mach_task_self;
use mach2::vm::{mach_vm_allocate, mach_vm_deallocate, mach_vm_remap};
use mach2::vm_inherit::VM_INHERIT_DEFAULT;
use mach2::vm_prot::vm_prot_t;
use mach2::vm_statistics::{VM_FLAGS_ANYWHERE, VM_FLAGS_FIXED, VM_FLAGS_OVERWRITE};

use crate::mach::{Decision, ExceptionPolicy, ExceptionPorts, PortName, shutting_down};
use crate::pager::{Pager, PagerError, ServeError};

/// `mach_exception_raise` request id; replies use id + 100.
const MACH_EXCEPTION_RAISE: i32 = 2405;
const MACH_MSGH_BITS_COMPLEX: u32 = 0x8000_0000;

/// `mach_msg_port_descriptor_t`.
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct PortDescriptor {
    name: mach_port_t,
    pad1: u32,
    pad2: u16,
    disposition: u8,
    kind: u8,
}

/// `__Request__mach_exception_raise_t` (MIG packs it to 4 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct RaiseRequest {
    head: mach_msg_header_t,
    descriptor_count: u32,
    thread: PortDescriptor,
    task: PortDescriptor,
    ndr: NDR_record_t,
    exception: i32,
    code_count: u32,
    code: [i64; 2],
}

/// `__Reply__mach_exception_raise_t`.
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct RaiseReply {
    head: mach_msg_header_t,
    ndr: NDR_record_t,
    ret_code: kern_return_t,
}

// The MIG layouts: a 24-byte header, the body count and two 12-byte port descriptors, the
// 8-byte NDR record, the exception, the code count and two 64-bit codes; the reply is the
// header, NDR and return code.
const _: () = assert!(size_of::<mach_msg_header_t>() == 24);
const _: () = assert!(size_of::<PortDescriptor>() == 12);
const _: () = assert!(size_of::<NDR_record_t>() == 8);
const _: () = assert!(size_of::<RaiseRequest>() == 84);
const _: () = assert!(size_of::<RaiseReply>() == 36);

/// Room for any request, with the trailer the kernel appends.
#[repr(C, align(8))]
struct RecvBuf([u8; 1024]);

/// The task's `EXC_BAD_ACCESS` port slot.
struct TaskPorts;

/// The out-arrays `task_get_exception_ports` and `task_swap_exception_ports` fill, one entry
/// per distinct handler of the masked exceptions.
struct HandlerSlots {
    masks: [u32; 16],
    count: u32,
    handlers: [mach_port_t; 16],
    behaviors: [i32; 16],
    flavors: [i32; 16],
}

impl HandlerSlots {
    fn new() -> Self {
        Self {
            masks: [0; 16],
            count: 16,
            handlers: [0; 16],
            behaviors: [0; 16],
            flavors: [0; 16],
        }
    }

    /// The handler the call reported (only `EXC_BAD_ACCESS` is masked, so there is at most
    /// one), or the null port; the call's error otherwise.
    fn handler(&self, kr: kern_return_t) -> Result<PortName, kern_return_t> {
        if kr != KERN_SUCCESS {
            return Err(kr);
        }
        Ok(if self.count > 0 {
            self.handlers[0]
        } else {
            MACH_PORT_NULL
        })
    }
}

impl ExceptionPorts for TaskPorts {
    type Error = kern_return_t;

    fn swap(&mut self, port: PortName) -> Result<PortName, kern_return_t> {
        let mut slots = HandlerSlots::new();
        // SAFETY: every out-array has room for `count` entries, as the call requires.
        let kr = unsafe {
            mach2::task::task_swap_exception_ports(
                task(),
                EXC_MASK_BAD_ACCESS,
                port,
                (EXCEPTION_DEFAULT | MACH_EXCEPTION_CODES) as i32,
                mach2::thread_status::THREAD_STATE_NONE,
                slots.masks.as_mut_ptr(),
                &mut slots.count,
                slots.handlers.as_mut_ptr(),
                slots.behaviors.as_mut_ptr(),
                slots.flavors.as_mut_ptr(),
            )
        };
        slots.handler(kr)
    }

    fn current(&self) -> Result<PortName, kern_return_t> {
        let mut slots = HandlerSlots::new();
        // SAFETY: every out-array has room for `count` entries, as the call requires.
        let kr = unsafe {
            mach2::task::task_get_exception_ports(
                task(),
                EXC_MASK_BAD_ACCESS,
                slots.masks.as_mut_ptr(),
                &mut slots.count,
                slots.handlers.as_mut_ptr(),
                slots.behaviors.as_mut_ptr(),
                slots.flavors.as_mut_ptr(),
            )
        };
        slots.handler(kr)
    }
}

/// This task's port.
fn task() -> mach_port_t {
    // SAFETY: mach_task_self reads the calling task's cached port name; it has no preconditions.
    unsafe { mach_task_self() }
}

fn check(call: &'static str, kr: kern_return_t) -> Result<(), PagerError> {
    if kr == KERN_SUCCESS {
        Ok(())
    } else {
        Err(PagerError::Mach { call, code: kr })
    }
}

/// Allocates our exception port: a receive right with a send right inserted.
fn exception_port() -> Result<mach_port_t, PagerError> {
    let mut port: mach_port_t = MACH_PORT_NULL;
    // SAFETY: `port` is a valid out-pointer for the new name.
    let kr = unsafe { mach_port_allocate(task(), MACH_PORT_RIGHT_RECEIVE, &mut port) };
    check("mach_port_allocate", kr)?;
    // SAFETY: `port` names the receive right just allocated.
    let kr = unsafe { mach_port_insert_right(task(), port, port, MACH_MSG_TYPE_MAKE_SEND) };
    check("mach_port_insert_right", kr)?;
    Ok(port)
}

/// Installs `bytes` at `addr` atomically: fill a scratch page, remap it over the target.
fn install(addr: u64, bytes: &[u8]) -> kern_return_t {
    let len = bytes.len() as u64;
    let mut scratch: u64 = 0;
    // SAFETY: `scratch` is a valid out-pointer; the kernel picks the address.
    let kr = unsafe { mach_vm_allocate(task(), &mut scratch, len, VM_FLAGS_ANYWHERE) };
    if kr != KERN_SUCCESS {
        return kr;
    }
    // SAFETY: `scratch` is a fresh writable allocation of `len` bytes that nothing else uses.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), scratch as *mut u8, bytes.len()) };
    let mut target = addr;
    let (mut cur, mut max): (vm_prot_t, vm_prot_t) = (0, 0);
    // SAFETY: replaces the pager-owned page at `addr` (inside a registered region) with a copy
    // of the scratch page in one call; out-pointers are valid.
    let kr = unsafe {
        mach_vm_remap(
            task(),
            &mut target,
            len,
            0,
            VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE,
            task(),
            scratch,
            1,
            &mut cur,
            &mut max,
            VM_INHERIT_DEFAULT,
        )
    };
    // SAFETY: `scratch` was allocated above with `len` bytes and is no longer used.
    let _ = unsafe { mach_vm_deallocate(task(), scratch, len) };
    kr
}

/// Forwards a request to `prior` and returns its answer.
fn forward(req: &RaiseRequest, prior: mach_port_t) -> kern_return_t {
    let mut reply_port: mach_port_t = MACH_PORT_NULL;
    // SAFETY: valid out-pointer for the new receive right.
    let kr = unsafe { mach_port_allocate(task(), MACH_PORT_RIGHT_RECEIVE, &mut reply_port) };
    if kr != KERN_SUCCESS {
        return KERN_FAILURE;
    }
    let mut msg = *req;
    msg.head.msgh_bits =
        MACH_MSGH_BITS_COMPLEX | MACH_MSG_TYPE_COPY_SEND | (MACH_MSG_TYPE_MAKE_SEND_ONCE << 8);
    msg.head.msgh_remote_port = prior;
    msg.head.msgh_local_port = reply_port;
    msg.head.msgh_size = size_of::<RaiseRequest>() as u32;
    msg.thread.disposition = MACH_MSG_TYPE_COPY_SEND as u8;
    msg.task.disposition = MACH_MSG_TYPE_COPY_SEND as u8;
    let mut buf = RecvBuf([0; 1024]);
    // SAFETY: `RaiseRequest` is plain data no larger than `buf`; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const msg).cast::<u8>(),
            buf.0.as_mut_ptr(),
            size_of::<RaiseRequest>(),
        )
    };
    // SAFETY: `buf` holds a complete request and has room (1024 bytes, 8-aligned) for a reply
    // with its trailer.
    let mr = unsafe {
        mach_msg(
            buf.0.as_mut_ptr().cast(),
            MACH_SEND_MSG | MACH_RCV_MSG,
            size_of::<RaiseRequest>() as u32,
            buf.0.len() as u32,
            reply_port,
            0,
            MACH_PORT_NULL,
        )
    };
    // SAFETY: `reply_port` is ours and no longer needed.
    let _ = unsafe { mach2::mach_port::mach_port_destroy(task(), reply_port) };
    if mr != KERN_SUCCESS {
        return KERN_FAILURE;
    }
    // SAFETY: a successful receive wrote at least a reply header + NDR + code into `buf`.
    let reply: RaiseReply = unsafe { std::ptr::read_unaligned(buf.0.as_ptr().cast()) };
    reply.ret_code
}

/// Answers `req` with `ret_code`.
fn reply(req: &RaiseRequest, ret_code: kern_return_t) {
    let remote_bits = req.head.msgh_bits & MACH_MSGH_BITS_REMOTE_MASK;
    let mut rep = RaiseReply {
        head: mach_msg_header_t {
            msgh_bits: remote_bits,
            msgh_size: size_of::<RaiseReply>() as u32,
            msgh_remote_port: req.head.msgh_remote_port,
            msgh_local_port: MACH_PORT_NULL,
            msgh_voucher_port: 0,
            msgh_id: req.head.msgh_id + 100,
        },
        ndr: req.ndr,
        ret_code,
    };
    // SAFETY: `rep` is a complete reply message of the size given.
    let _ = unsafe {
        mach_msg(
            (&raw mut rep).cast(),
            MACH_SEND_MSG,
            size_of::<RaiseReply>() as u32,
            0,
            MACH_PORT_NULL,
            0,
            MACH_PORT_NULL,
        )
    };
}

/// Spawns the Mach exception server for `pager` (the macOS [`spawn_server`](crate::spawn_server)).
pub(crate) fn spawn_mach_server(
    pager: &Pager,
) -> Result<JoinHandle<Result<(), ServeError>>, PagerError> {
    let port = exception_port()?;
    let mut policy = ExceptionPolicy::new(port);
    policy
        .install(&mut TaskPorts)
        .map_err(|code| PagerError::Mach {
            call: "task_swap_exception_ports",
            code,
        })?;
    let pager = pager.clone();
    std::thread::Builder::new()
        .name("squib-mach".into())
        .spawn(move || serve(pager, port, policy))
        .map_err(|source| PagerError::Spawn {
            what: "Mach exception server thread",
            source,
        })
}

fn serve(pager: Pager, port: mach_port_t, mut policy: ExceptionPolicy) -> Result<(), ServeError> {
    let timeout_ms = pager
        .config()
        .poll_interval
        .as_millis()
        .clamp(1, u32::MAX as u128) as u32;
    let page = crate::region::host_page_size();
    let mut buf = RecvBuf([0; 1024]);
    while !shutting_down(&pager) {
        // SAFETY: `buf` is an 8-aligned 1024-byte receive buffer; `port` is our receive right.
        let mr = unsafe {
            mach_msg(
                buf.0.as_mut_ptr().cast(),
                MACH_RCV_MSG | MACH_RCV_TIMEOUT,
                0,
                buf.0.len() as u32,
                port,
                timeout_ms,
                MACH_PORT_NULL,
            )
        };
        if mr == MACH_RCV_TIMED_OUT {
            policy
                .check_drift(&pager, &mut TaskPorts)
                .map_err(|code| ServeError::Mach {
                    call: "task_get_exception_ports",
                    code,
                })?;
            continue;
        }
        if mr != KERN_SUCCESS {
            return Err(ServeError::Mach {
                call: "mach_msg",
                code: mr,
            });
        }
        // SAFETY: the kernel wrote a message into `buf`; RaiseRequest is plain data and the
        // read is unaligned-safe.
        let req: RaiseRequest = unsafe { std::ptr::read_unaligned(buf.0.as_ptr().cast()) };
        if req.head.msgh_id != MACH_EXCEPTION_RAISE {
            continue;
        }
        let addr = (req.code_count >= 2).then(|| req.code[1] as u64);
        let ret = match policy.decide(&pager, addr) {
            Decision::Serve => {
                let a = addr.unwrap_or(0);
                let start = a - a % page as u64;
                match pager.serve_fault(start, page) {
                    Ok(bytes) => install(start, &bytes),
                    // Fail closed: the default handler turns the fault into SIGBUS.
                    Err(_) => KERN_FAILURE,
                }
            }
            Decision::Forward(prior) => forward(&req, prior),
            Decision::Default => KERN_FAILURE,
        };
        reply(&req, ret);
        for right in [req.thread.name, req.task.name] {
            // SAFETY: the request moved these send rights to us; we drop our references.
            let _ = unsafe { mach_port_deallocate(task(), right) };
        }
    }
    let _ = policy.uninstall(&mut TaskPorts);
    Ok(())
}
