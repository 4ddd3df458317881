//! Hazard pointers with an asymmetric fence: what lets [`ArcCell`](crate::sync::ArcCell) hand
//! out a reference to its current value with **no read-modify-write** on the read path.
//!
//! # The protocol
//!
//! A cell owns one strong count of an `Arc<T>` behind an `AtomicPtr`. Every thread has a
//! [`Record`] of hazard slots, linked into its [`Domain`]'s list for good (records are reused
//! by later threads, never freed while the domain lives).
//!
//! - **Reader** (`protect`): load the cell's pointer `p`, store `p` into a free slot of its
//!   own record, a *light* barrier, load the cell again; if it still holds `p`, `p` is
//!   protected until the slot is cleared (a plain `Release` store), else retry.
//! - **Writer** (`retire`, after swapping a new pointer in): a *heavy* barrier, then scan every
//!   record; the old value's count is dropped only when no slot holds its pointer, else it
//!   waits in the domain's retired list until a later scan (`reclaim`) finds it free.
//!
//! The two barriers make a store-buffering (Dekker) pair: either the reader's second load sees
//! the new pointer (and it retries), or the writer's scan sees the reader's slot. With
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Linux ≥ 4.14, registered when the domain is
//! created) the heavy barrier runs a full memory barrier on every CPU running one of this
//! process's threads, so the light barrier only has to stop the *compiler* from reordering:
//! the reader's path is two loads and a store, cheaper than an epoch pin or a reference-count
//! increment. Where `membarrier` is unavailable (macOS, old or filtered kernels) both sides use
//! `fence(SeqCst)`, the symmetric form of the same pairing; the mode is fixed when the domain
//! is created, before any cell exists, so readers and writers always agree on it.
//!
//! A thread that holds more guards at once than its record has slots gets a counted `Arc`
//! instead (protected for an instant by a scratch slot that is never held across calls).
//!
//! The loom suite (`tests/loom.rs`) checks this protocol in its symmetric form with loom's
//! atomics and fences, with negative controls: a reader that skips the second load, and one
//! without its barrier, must each be caught reading a freed value.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::Arc;

#[cfg(not(feature = "loom"))]
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering, compiler_fence, fence};

#[cfg(feature = "loom")]
use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering, fence};

use platform_primitives::sync::Mutex;

/// Hazard slots a thread can hold at once before guards fall back to counted references.
pub(crate) const SLOTS: usize = 8;

/// A thread's hazard slots: `SLOTS` that guards hold, and one scratch slot used only inside
/// `protect`'s fallback.
pub(crate) struct Record {
    slots: [AtomicPtr<()>; SLOTS],
    scratch: AtomicPtr<()>,
    /// The domain's barrier mode, copied here so a reader touches nothing but its record.
    barrier: Barrier,
    in_use: AtomicBool,
    next: AtomicPtr<Record>,
}

impl Record {
    fn new(barrier: Barrier) -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            scratch: AtomicPtr::new(std::ptr::null_mut()),
            barrier,
            in_use: AtomicBool::new(true),
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The reader's half of the barrier pair.
    #[inline]
    fn light_barrier(&self) {
        match self.barrier {
            #[cfg(not(feature = "loom"))]
            Barrier::Asymmetric => compiler_fence(Ordering::SeqCst),
            #[cfg(feature = "loom")]
            Barrier::WriterOnly => {}
            Barrier::Symmetric => fence(Ordering::SeqCst),
        }
    }

    /// The reader's side: a guard on `cell`'s current value, protected by one of this
    /// record's slots (or, with every slot held, a counted reference).
    #[inline]
    pub(crate) fn protect<T>(&self, cell: &AtomicPtr<T>) -> HazardGuard<'_, T> {
        let Some(slot) = self.free_slot() else {
            return self.protect_counted(cell);
        };
        let ptr = self.protect_in(slot, cell);
        // SAFETY: `ptr` came from `Arc::into_raw` (cells hold nothing else) and its value
        // cannot be freed while `slot` holds it; the `ManuallyDrop` never drops this count.
        let value = ManuallyDrop::new(unsafe { Arc::from_raw(ptr.cast_const()) });
        HazardGuard {
            value,
            slot: Some(slot),
        }
    }

    /// Every slot held: protect with the scratch slot just long enough to take a count.
    #[cold]
    fn protect_counted<T>(&self, cell: &AtomicPtr<T>) -> HazardGuard<'_, T> {
        let ptr = self.protect_in(&self.scratch, cell);
        // SAFETY: as in `protect`: the scratch slot keeps the value alive while its count is
        // taken; the borrowed `Arc` itself is never dropped.
        let borrowed = ManuallyDrop::new(unsafe { Arc::from_raw(ptr.cast_const()) });
        let value = Arc::clone(&borrowed);
        self.scratch.store(std::ptr::null_mut(), Ordering::Release);
        HazardGuard {
            value: ManuallyDrop::new(value),
            slot: None,
        }
    }

    /// Loads `cell` into `slot` until the slot holds what the cell holds.
    #[inline]
    fn protect_in<T>(&self, slot: &AtomicPtr<()>, cell: &AtomicPtr<T>) -> *mut T {
        let mut ptr = cell.load(Ordering::Acquire);
        loop {
            // Release: a scan that reads this pointer also sees this slot's earlier clear, so
            // whatever the previous guard read happens before a free that scan allows.
            slot.store(ptr.cast(), Ordering::Release);
            self.light_barrier();
            let again = cell.load(Ordering::Acquire);
            if again == ptr {
                return ptr;
            }
            ptr = again;
        }
    }

    /// A reader for the loom suite's negative control: publishes its slot but never checks
    /// the cell again, so a writer can free the value between the load and the store.
    #[cfg(feature = "loom")]
    pub(crate) fn protect_unchecked<T>(&self, cell: &AtomicPtr<T>) -> HazardGuard<'_, T> {
        let slot = self.free_slot().expect("a free slot");
        let ptr = cell.load(Ordering::Acquire);
        slot.store(ptr.cast(), Ordering::Relaxed);
        self.light_barrier();
        // SAFETY: none — this is the deliberately broken reader the model must catch.
        let value = ManuallyDrop::new(unsafe { Arc::from_raw(ptr.cast_const()) });
        HazardGuard {
            value,
            slot: Some(slot),
        }
    }

    /// A slot of this record that no guard holds. Only the record's owner fills slots, so a
    /// null slot stays free until this thread fills it (a guard dropped on another thread
    /// only ever clears one).
    #[inline]
    fn free_slot(&self) -> Option<&AtomicPtr<()>> {
        self.slots
            .iter()
            .find(|slot| slot.load(Ordering::Relaxed).is_null())
    }

    /// Adds the pointers this record's slots hold to `held`.
    fn collect(&self, held: &mut Vec<usize>) {
        for slot in self.slots.iter().chain(std::iter::once(&self.scratch)) {
            let ptr = slot.load(Ordering::Acquire);
            if !ptr.is_null() {
                held.push(ptr as usize);
            }
        }
    }
}

/// How readers and writers order their halves of the protocol (fixed per domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Barrier {
    /// `membarrier` on the writer's side, a compiler fence on the reader's.
    #[cfg(not(feature = "loom"))]
    Asymmetric,
    /// `fence(SeqCst)` on both sides.
    Symmetric,
    /// The writer's fence without the reader's: the loom suite's negative control.
    #[cfg(feature = "loom")]
    WriterOnly,
}

/// A value whose last count waits for hazard slots to let go.
struct Retired {
    ptr: *mut (),
    drop: unsafe fn(*mut ()),
    /// Whether a heavy barrier ran after the value left its cell: from then on no reader can
    /// newly protect it, so later scans need no barrier of their own.
    fenced: bool,
}

// SAFETY: a `Retired` is made only from an `Arc<T>` with `T: Send + Sync` (see `retire`), so
// dropping it on another thread is what `Arc<T>: Send` allows.
unsafe impl Send for Retired {}

/// Drops one strong count of an `Arc<T>` given as a raw pointer.
///
/// # Safety
///
/// `ptr` came from `Arc::<T>::into_raw` and its count is owned by the caller.
unsafe fn drop_arc<T>(ptr: *mut ()) {
    // SAFETY: the caller's contract.
    drop(unsafe { Arc::from_raw(ptr.cast::<T>().cast_const()) });
}

/// Hazard records, the retired list and the barrier mode.
pub(crate) struct Domain {
    head: AtomicPtr<Record>,
    retired: Mutex<Vec<Retired>>,
    barrier: Barrier,
}

impl Domain {
    /// A domain whose barrier mode is `barrier`.
    pub(crate) fn new(barrier: Barrier) -> Self {
        Self {
            head: AtomicPtr::new(std::ptr::null_mut()),
            retired: Mutex::new(Vec::new()),
            barrier,
        }
    }

    /// A record for the calling thread: a released one if any, else a new one linked in.
    /// Records stay linked (and allocated) for the domain's life.
    pub(crate) fn acquire_record(&self) -> &Record {
        let mut cursor = self.head.load(Ordering::Acquire);
        while !cursor.is_null() {
            // SAFETY: records are linked once and freed only with the domain (`Drop`).
            let record = unsafe { &*cursor };
            if !record.in_use.load(Ordering::Relaxed)
                && record
                    .in_use
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return record;
            }
            cursor = record.next.load(Ordering::Acquire);
        }
        let record = Box::into_raw(Box::new(Record::new(self.barrier)));
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `record` is ours until the exchange below publishes it.
            unsafe { &*record }.next.store(head, Ordering::Relaxed);
            match self
                .head
                .compare_exchange(head, record, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => head = current,
            }
        }
        // SAFETY: linked for the domain's life (freed only by its `Drop`).
        unsafe { &*record }
    }

    /// Gives a record back for another thread to reuse. Guards the thread still holds (moved
    /// to other threads) keep their slots: reuse takes only free slots.
    pub(crate) fn release_record(&self, record: &Record) {
        record.in_use.store(false, Ordering::Release);
    }

    /// The writer's side, after it swapped `old` out of its cell: keeps `old`'s count for
    /// the next [`reclaim`](Self::reclaim), which drops it once no slot holds it. Retiring
    /// runs no destructor, so a writer may retire under its own locks and reclaim after.
    pub(crate) fn retire<T: Send + Sync + 'static>(&self, old: Arc<T>) {
        let ptr = Arc::into_raw(old).cast_mut().cast::<()>();
        self.retired.lock().push(Retired {
            ptr,
            drop: drop_arc::<T>,
            fenced: false,
        });
    }

    /// Drops the retired values no hazard slot holds any more; returns how many are still
    /// held. The heavy barrier runs only when something was retired since the last one.
    pub(crate) fn reclaim(&self) -> usize {
        let free: Vec<Retired> = {
            let mut retired = self.retired.lock();
            if retired.is_empty() {
                return 0;
            }
            if retired.iter().any(|r| !r.fenced) {
                self.heavy_barrier();
                for r in retired.iter_mut() {
                    r.fenced = true;
                }
            }
            let held = self.hazards();
            let (kept, free): (Vec<Retired>, Vec<Retired>) = retired
                .drain(..)
                .partition(|r| held.binary_search(&(r.ptr as usize)).is_ok());
            *retired = kept;
            free
        };
        // Dropped outside the lock: a value's destructor may retire cells of its own.
        for retired in free {
            // SAFETY: `retire` made it from an `Arc<T>` whose count it owns, and no slot
            // holds it (every reader that could still reach it would have been seen).
            unsafe { (retired.drop)(retired.ptr) };
        }
        self.retired.lock().len()
    }

    /// Every pointer a slot holds now, sorted.
    fn hazards(&self) -> Vec<usize> {
        let mut held = Vec::new();
        let mut cursor = self.head.load(Ordering::Acquire);
        while !cursor.is_null() {
            // SAFETY: records live as long as the domain.
            let record = unsafe { &*cursor };
            record.collect(&mut held);
            cursor = record.next.load(Ordering::Acquire);
        }
        held.sort_unstable();
        held
    }

    fn heavy_barrier(&self) {
        match self.barrier {
            #[cfg(not(feature = "loom"))]
            Barrier::Asymmetric => {
                if !membarrier::expedited() {
                    // Registered at creation, so this does not fail; were it to, a full
                    // fence here would not pair with the readers' compiler fences.
                    std::process::abort();
                }
            }
            _ => fence(Ordering::SeqCst),
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let retired = std::mem::take(&mut *self.retired.lock());
        for retired in retired {
            // SAFETY: no guard outlives its domain, so no slot holds anything.
            unsafe { (retired.drop)(retired.ptr) };
        }
        let mut cursor = self.head.load(Ordering::Acquire);
        while !cursor.is_null() {
            // SAFETY: linked by `acquire_record` from `Box::into_raw`; freed once, here.
            let record = unsafe { Box::from_raw(cursor) };
            cursor = record.next.load(Ordering::Acquire);
        }
    }
}

/// A protected value: derefs to the `Arc` (clone it to keep the value beyond the guard).
pub(crate) struct HazardGuard<'d, T> {
    value: ManuallyDrop<Arc<T>>,
    /// The slot protecting `value`; `None` when `value` is a counted reference.
    slot: Option<&'d AtomicPtr<()>>,
}

impl<T> Deref for HazardGuard<'_, T> {
    type Target = Arc<T>;
    #[inline]
    fn deref(&self) -> &Arc<T> {
        &self.value
    }
}

impl<T> Drop for HazardGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        match self.slot {
            Some(slot) => slot.store(std::ptr::null_mut(), Ordering::Release),
            // SAFETY: a counted reference, dropped once.
            None => unsafe { ManuallyDrop::drop(&mut self.value) },
        }
    }
}

/// An atomically replaceable `Arc<T>` read through hazard slots: the registry's slot cell.
pub(crate) struct HazardCell<T: Send + Sync + 'static> {
    ptr: AtomicPtr<T>,
}

impl<T: Send + Sync + 'static> HazardCell<T> {
    /// A cell holding `value`.
    pub(crate) fn new(value: Arc<T>) -> Self {
        Self {
            ptr: AtomicPtr::new(Arc::into_raw(value).cast_mut()),
        }
    }

    /// The current value, protected by a slot of `record`. The guard borrows the cell: a
    /// cell is dropped only when no guard on its values is left.
    #[inline]
    pub(crate) fn load_in<'a>(&'a self, record: &'a Record) -> HazardGuard<'a, T> {
        record.protect(&self.ptr)
    }

    /// Replaces the value; returns the old one (a counted reference: the cell's own count
    /// goes through [`Domain::retire`]).
    pub(crate) fn swap_in(&self, domain: &Domain, value: Arc<T>) -> Arc<T> {
        let old = self
            .ptr
            .swap(Arc::into_raw(value).cast_mut(), Ordering::AcqRel);
        // SAFETY: the cell held `old`'s count, now ours; the clone is the caller's.
        let old = unsafe { Arc::from_raw(old.cast_const()) };
        let returned = Arc::clone(&old);
        domain.retire(old);
        returned
    }

    /// For the loom suite's negative control (see [`Record::protect_unchecked`]).
    #[cfg(feature = "loom")]
    pub(crate) fn load_unchecked_in<'a>(&'a self, record: &'a Record) -> HazardGuard<'a, T> {
        record.protect_unchecked(&self.ptr)
    }
}

impl<T: Send + Sync + 'static> Drop for HazardCell<T> {
    /// Drops the cell's count directly: `&mut self` means no reader is inside `load_in`, and
    /// every guard borrows the cell, so none is left.
    fn drop(&mut self) {
        let ptr = self.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !ptr.is_null() {
            // SAFETY: the cell's own count, taken once.
            drop(unsafe { Arc::from_raw(ptr.cast_const()) });
        }
    }
}

/// The process-wide domain and each thread's record in it.
#[cfg(not(feature = "loom"))]
mod global {
    use std::cell::Cell;
    use std::sync::OnceLock;

    use super::{Barrier, Domain, Record, membarrier};

    static DOMAIN: OnceLock<Domain> = OnceLock::new();

    /// The process-wide domain; the first call picks its barrier mode.
    #[inline]
    pub(crate) fn domain() -> &'static Domain {
        match DOMAIN.get() {
            Some(domain) => domain,
            None => create(),
        }
    }

    #[cold]
    fn create() -> &'static Domain {
        DOMAIN.get_or_init(|| {
            Domain::new(if membarrier::register() {
                Barrier::Asymmetric
            } else {
                Barrier::Symmetric
            })
        })
    }

    thread_local! {
        /// This thread's record (a plain cell: reading it checks no destructor state).
        static RECORD: Cell<Option<&'static Record>> = const { Cell::new(None) };
        /// Gives the record back when the thread exits.
        static RELEASER: Releaser = const { Releaser };
    }

    struct Releaser;

    impl Drop for Releaser {
        fn drop(&mut self) {
            if let Some(record) = RECORD.with(Cell::take) {
                domain().release_record(record);
            }
        }
    }

    /// Runs `f` with this thread's record.
    #[inline]
    pub(crate) fn with_record<R>(f: impl FnOnce(&'static Record) -> R) -> R {
        match RECORD.with(Cell::get) {
            Some(record) => f(record),
            None => with_new_record(f),
        }
    }

    /// The thread's first read: takes a record and arranges its release at thread exit; a
    /// read from a destructor running after that release borrows a record for the call.
    #[cold]
    #[inline(never)]
    fn with_new_record<R>(f: impl FnOnce(&'static Record) -> R) -> R {
        let domain = domain();
        let record = domain.acquire_record();
        if RELEASER.try_with(|_| ()).is_ok() {
            RECORD.with(|cell| cell.set(Some(record)));
            f(record)
        } else {
            let out = f(record);
            domain.release_record(record);
            out
        }
    }
}

#[cfg(not(feature = "loom"))]
pub(crate) use global::{domain, with_record};

/// `membarrier(2)`: the asymmetric heavy barrier.
#[cfg(not(feature = "loom"))]
pub(crate) mod membarrier {
    /// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`; false where the kernel
    /// does not offer it (then the domain uses symmetric fences).
    pub(crate) fn register() -> bool {
        #[cfg(target_os = "linux")]
        {
            // MEMBARRIER_CMD_QUERY = 0, _REGISTER_PRIVATE_EXPEDITED = 16, _PRIVATE_EXPEDITED = 8.
            // SAFETY: a query takes no pointers.
            let supported = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
            if supported < 0 || supported & 8 == 0 {
                return false;
            }
            // SAFETY: registration takes no pointers.
            unsafe { libc::syscall(libc::SYS_membarrier, 16, 0, 0) == 0 }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// A full memory barrier on every CPU running a thread of this process; false if the
    /// kernel refused.
    pub(crate) fn expedited() -> bool {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the command takes no pointers.
            unsafe { libc::syscall(libc::SYS_membarrier, 8, 0, 0) == 0 }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }
}

/// The loom model of the protocol: one reader protecting a cell's value while a writer swaps
/// it out and retires it.
#[cfg(feature = "loom")]
pub mod model {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicBool, Ordering};

    use super::{Barrier, Domain, HazardCell};

    /// Which reader the model runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Variant {
        /// The real protocol.
        Correct,
        /// Negative control: the reader never loads the cell a second time.
        NoRecheck,
        /// Negative control: the reader has no barrier between its slot and its recheck.
        NoReaderBarrier,
    }

    /// A value that records its own destruction.
    struct Value(loom::sync::Arc<AtomicBool>);

    impl Drop for Value {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Runs the scenario once (call it inside `loom::model`). Panics with "freed under its
    /// reader" if a protected value was dropped while protected, and with "never freed" if
    /// the retired value outlived its last reader and a final reclaim.
    pub fn reader_against_retire(variant: Variant) {
        let domain = Arc::new(Domain::new(match variant {
            Variant::NoReaderBarrier => Barrier::WriterOnly,
            _ => Barrier::Symmetric,
        }));
        let first_dropped = loom::sync::Arc::new(AtomicBool::new(false));
        let first = Arc::new(Value(loom::sync::Arc::clone(&first_dropped)));
        let first_at = Arc::as_ptr(&first) as usize;
        let cell = Arc::new(HazardCell::new(first));

        let reader = loom::thread::spawn({
            let (domain, cell, dropped) = (
                Arc::clone(&domain),
                Arc::clone(&cell),
                loom::sync::Arc::clone(&first_dropped),
            );
            move || {
                let record = domain.acquire_record();
                let guard = match variant {
                    Variant::NoRecheck => cell.load_unchecked_in(record),
                    _ => cell.load_in(record),
                };
                // Only the address is compared: a freed value is never read.
                let is_first = Arc::as_ptr(&guard) as usize == first_at;
                assert!(
                    !(is_first && dropped.load(Ordering::SeqCst)),
                    "a protected value was freed under its reader"
                );
                drop(guard);
                domain.release_record(record);
            }
        });

        let second = Arc::new(Value(loom::sync::Arc::new(AtomicBool::new(false))));
        drop(cell.swap_in(&domain, second));
        domain.reclaim();
        reader.join().expect("reader");
        domain.reclaim();
        assert!(
            first_dropped.load(Ordering::SeqCst),
            "a retired value was never freed after its last reader"
        );
        drop(cell);
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::{Barrier, Domain, HazardCell, SLOTS, membarrier};

    /// A value that records its destruction in a flag the test keeps.
    struct Value(Arc<AtomicBool>);

    impl Drop for Value {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn value() -> (Arc<Value>, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (Arc::new(Value(Arc::clone(&dropped))), dropped)
    }

    fn barrier() -> Barrier {
        if membarrier::register() {
            Barrier::Asymmetric
        } else {
            Barrier::Symmetric
        }
    }

    #[test]
    fn a_replaced_value_lives_until_its_last_guard_lets_go_then_a_reclaim_frees_it() {
        let domain = Domain::new(barrier());
        let record = domain.acquire_record();
        let (first, first_dropped) = value();
        let cell = HazardCell::new(first);
        // More guards than slots: the rest are counted references.
        let guards: Vec<_> = (0..SLOTS + 3).map(|_| cell.load_in(record)).collect();
        let (second, _) = value();
        drop(cell.swap_in(&domain, second));
        assert!(
            !first_dropped.load(Ordering::SeqCst),
            "freed under its guards"
        );
        assert_eq!(
            domain.reclaim(),
            1,
            "the replaced value waits for its guards"
        );
        drop(guards);
        assert_eq!(domain.reclaim(), 0);
        assert!(first_dropped.load(Ordering::SeqCst), "never freed");
    }

    #[test]
    fn records_of_exited_threads_are_reused() {
        let domain = Arc::new(Domain::new(barrier()));
        for _ in 0..50 {
            let domain = Arc::clone(&domain);
            std::thread::spawn(move || {
                let record = domain.acquire_record();
                domain.release_record(record);
            })
            .join()
            .expect("thread");
        }
        let mut records = 0;
        let mut cursor = domain.head.load(Ordering::Acquire);
        while !cursor.is_null() {
            records += 1;
            // SAFETY: records live as long as the domain.
            cursor = unsafe { &*cursor }.next.load(Ordering::Acquire);
        }
        assert_eq!(records, 1, "one record, reused by each thread in turn");
    }

    /// Readers protect values while a writer replaces them as fast as it can; a value is never
    /// dropped while a reader holds it, and all but the current one are freed. Each value's
    /// drop flag lives outside it, found by the value's address, so a failing run reads no
    /// freed memory.
    #[test]
    fn readers_never_hold_a_freed_value_while_a_writer_replaces_it() {
        const VALUES: usize = 20_000;
        let domain = Arc::new(Domain::new(barrier()));
        let values: Vec<(Arc<Value>, Arc<AtomicBool>)> = (0..VALUES).map(|_| value()).collect();
        let mut by_address: Vec<(usize, Arc<AtomicBool>)> = values
            .iter()
            .map(|(v, dropped)| (Arc::as_ptr(v) as usize, Arc::clone(dropped)))
            .collect();
        by_address.sort_unstable_by_key(|(address, _)| *address);
        let by_address = Arc::new(by_address);
        let mut values = values.into_iter().map(|(v, _)| v);
        let cell = Arc::new(HazardCell::new(values.next().expect("a value")));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (domain, cell, stop, reads, by_address) = (
                    Arc::clone(&domain),
                    Arc::clone(&cell),
                    Arc::clone(&stop),
                    Arc::clone(&reads),
                    Arc::clone(&by_address),
                );
                std::thread::spawn(move || {
                    let record = domain.acquire_record();
                    while !stop.load(Ordering::Relaxed) {
                        let guard = cell.load_in(record);
                        let address = Arc::as_ptr(&guard) as usize;
                        let at = by_address
                            .binary_search_by_key(&address, |(a, _)| *a)
                            .expect("a known value");
                        assert!(
                            !by_address[at].1.load(Ordering::SeqCst),
                            "a protected value was dropped"
                        );
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    domain.release_record(record);
                })
            })
            .collect();
        for next in values {
            drop(cell.swap_in(&domain, next));
            domain.reclaim();
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader");
        }
        assert_eq!(domain.reclaim(), 0);
        let live = by_address
            .iter()
            .filter(|(_, dropped)| !dropped.load(Ordering::SeqCst))
            .count();
        assert_eq!(live, 1, "every replaced value freed, the current one kept");
        assert!(reads.load(Ordering::Relaxed) > 0);
    }
}
