//! Calls in flight (`function.calls.concurrent`), counted per thread.
//!
//! A call adds 1 to a counter of its own thread when it starts and 1 less
//! when it ends (on whichever thread that is): a plain load and store, where
//! one counter shared by every thread needs a locked add at each end, and
//! makes the threads of a busy service take turns on its cache line. The
//! in-flight callback sums every thread's counter of a slot, with the counts
//! of threads that have exited.
//!
//! Each bound set of instruments (a callsite under one meter provider) has
//! its own slot, up to [`CAPACITY`]; beyond that a callsite counts in one
//! shared atomic, as before.
//!
//! Memory stays bounded: a thread holds a table of [`BLOCKS`] pointers and
//! allocates a block of [`SLOTS`] counters only when one of its calls uses a
//! slot in it; it frees them when it exits.

use std::cell::{Cell, OnceCell};
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Counters in one block.
const SLOTS: usize = 64;
/// Blocks in one thread's table.
const BLOCKS: usize = 64;
/// Slots in all: callsites (times meter providers) counted per thread.
pub(super) const CAPACITY: u32 = (SLOTS * BLOCKS) as u32;

/// The next slot to hand out.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The counters of every live thread that has counted a call.
static THREADS: Mutex<Vec<Arc<Counts>>> = Mutex::new(Vec::new());

/// The counts of threads that have exited, and of calls that started or
/// ended after their thread's counters were gone (during thread exit).
/// Changed only under [`THREADS`]' lock.
static RETIRED: Counts = Counts::new();

/// Counts [`add_retired`]'s calls, for the test of a call that ends during
/// thread exit.
#[cfg(test)]
static LATE_ADDS: AtomicU32 = AtomicU32::new(0);

/// A slot for a new set of bound instruments; `None` past [`CAPACITY`].
pub(super) fn claim() -> Option<u32> {
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n < CAPACITY).then_some(n + 1)
    })
    .ok()
}

/// One thread's counters (or the retired ones), block by block.
#[derive(Debug)]
struct Counts {
    blocks: [AtomicPtr<Block>; BLOCKS],
}

#[derive(Debug)]
struct Block([AtomicI64; SLOTS]);

impl Counts {
    const fn new() -> Self {
        Self {
            blocks: [const { AtomicPtr::new(std::ptr::null_mut()) }; BLOCKS],
        }
    }

    /// The counter of `slot`, if its block exists.
    #[inline(always)]
    fn get(&self, slot: u32) -> Option<&AtomicI64> {
        let slot = slot as usize;
        let block = self.blocks[slot / SLOTS].load(Ordering::Acquire);
        // SAFETY: a block pointer is null or from `Box::into_raw`, freed only
        // when the table drops, which outlives this borrow.
        unsafe { block.as_ref() }.map(|b| &b.0[slot % SLOTS])
    }

    /// The counter of `slot`, making its block. Only one thread ever makes
    /// the blocks of a table: its owner, or for [`RETIRED`] whoever holds
    /// [`THREADS`]' lock.
    #[inline(always)]
    fn get_or_make(&self, slot: u32) -> &AtomicI64 {
        match self.get(slot) {
            Some(c) => c,
            None => self.make(slot),
        }
    }

    #[cold]
    #[inline(never)]
    fn make(&self, slot: u32) -> &AtomicI64 {
        let block = Box::into_raw(Box::new(Block([const { AtomicI64::new(0) }; SLOTS])));
        self.blocks[slot as usize / SLOTS].store(block, Ordering::Release);
        // SAFETY: just made, freed only when the table drops.
        &unsafe { &*block }.0[slot as usize % SLOTS]
    }

    /// Every counter in the blocks that exist, with its slot.
    fn each(&self) -> impl Iterator<Item = (usize, &AtomicI64)> {
        self.blocks
            .iter()
            .enumerate()
            // SAFETY: as in `get`.
            .filter_map(|(i, b)| unsafe { b.load(Ordering::Acquire).as_ref() }.map(|b| (i, b)))
            .flat_map(|(i, b)| b.0.iter().enumerate().map(move |(j, c)| (i * SLOTS + j, c)))
    }

    /// Adds `other`'s counts to these (under [`THREADS`]' lock).
    fn absorb(&self, other: &Counts) {
        for (slot, c) in other.each() {
            let n = c.load(Ordering::Relaxed);
            if n != 0 {
                self.get_or_make(slot as u32)
                    .fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Adds these counts to `sums`, by slot.
    fn add_to(&self, sums: &mut [i64]) {
        for (slot, c) in self.each() {
            sums[slot] += c.load(Ordering::Relaxed);
        }
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        for block in &mut self.blocks {
            let p = *block.get_mut();
            if !p.is_null() {
                // SAFETY: from `Box::into_raw`, and no one else holds the table.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

/// A thread's registered counters; at thread exit, their counts move to
/// [`RETIRED`] and the table is freed.
struct Local(Arc<Counts>);

impl Local {
    fn register() -> Self {
        let counts = Arc::new(Counts::new());
        THREADS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&counts));
        Self(counts)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // From here on this thread counts in `RETIRED`.
        TABLE.with(|t| t.set(std::ptr::null()));
        let mut threads = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the lock: a reading callback sees these counts either here or
        // in `RETIRED`, never in both or neither.
        RETIRED.absorb(&self.0);
        threads.retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

thread_local! {
    /// This thread's table while [`LOCAL`] holds it; null before it is
    /// registered and once it is gone. Plain data, so reading it costs one
    /// load (a thread-local with drop glue checks its state first).
    static TABLE: Cell<*const Counts> = const { Cell::new(std::ptr::null()) };
    /// Owns this thread's table, from its first counted call to its exit.
    static LOCAL: OnceCell<Local> = const { OnceCell::new() };
}

/// Adds `delta` to `slot`'s count on this thread.
#[inline(always)]
pub(super) fn add(slot: u32, delta: i64) {
    let table = TABLE.with(Cell::get);
    // SAFETY: non-null only while this thread's `Local` holds the table.
    match unsafe { table.as_ref() }.and_then(|t| t.get(slot)) {
        // Only this thread writes its counters: no locked add needed.
        Some(c) => c.store(c.load(Ordering::Relaxed) + delta, Ordering::Relaxed),
        None => add_slow(slot, delta),
    }
}

/// [`add`] on a thread's first count, or the first in a new block, or
/// after the thread's table is gone.
#[cold]
#[inline(never)]
fn add_slow(slot: u32, delta: i64) {
    let counted = LOCAL.try_with(|l| {
        let counts = &l.get_or_init(Local::register).0;
        TABLE.with(|t| t.set(Arc::as_ptr(counts)));
        let c = counts.get_or_make(slot);
        c.store(c.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    });
    if counted.is_err() {
        add_retired(slot, delta);
    }
}

/// For a call that starts or ends while its thread exits, after the
/// thread's counters are gone.
#[cold]
#[inline(never)]
fn add_retired(slot: u32, delta: i64) {
    #[cfg(test)]
    LATE_ADDS.fetch_add(1, Ordering::Relaxed);
    let _threads = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
    RETIRED
        .get_or_make(slot)
        .fetch_add(delta, Ordering::Relaxed);
}

/// Every slot's count, summed over the live threads and the exited ones
/// (index: slot). A call that moved between threads while this read may be
/// counted on one thread and not yet on the other: the callback clamps a sum
/// below 0.
pub(super) fn sums() -> Vec<i64> {
    let threads = THREADS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut sums = vec![0; CAPACITY as usize];
    RETIRED.add_to(&mut sums);
    for counts in threads.iter() {
        counts.add_to(&mut sums);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_on_one_thread_ended_on_another_sum_to_what_is_in_flight() {
        let slot = claim().expect("a slot");
        add(slot, 1);
        add(slot, 1);
        assert_eq!(sums()[slot as usize], 2);
        // Ended on another thread, which then exits: its -1 is retired.
        std::thread::spawn(move || add(slot, -1)).join().unwrap();
        assert_eq!(sums()[slot as usize], 1);
        add(slot, -1);
        assert_eq!(sums()[slot as usize], 0);
    }

    #[test]
    fn a_thread_that_exits_with_calls_in_flight_keeps_them_counted() {
        let slot = claim().expect("a slot");
        std::thread::spawn(move || {
            add(slot, 1);
            add(slot, 1);
        })
        .join()
        .unwrap();
        assert_eq!(sums()[slot as usize], 2);
        let table = std::thread::spawn(move || {
            add(slot, -2);
            LOCAL.with(|l| Arc::downgrade(&l.get().expect("registered").0))
        })
        .join()
        .unwrap();
        assert_eq!(sums()[slot as usize], 0);
        // The exited thread's table left the registry and was freed.
        assert!(table.upgrade().is_none());
    }

    #[test]
    fn a_call_that_ends_during_thread_exit_is_counted_in_the_retired_counts() {
        struct EndsLate(u32);
        impl Drop for EndsLate {
            fn drop(&mut self) {
                add(self.0, -1);
            }
        }
        thread_local! {
            static LATE: std::cell::RefCell<Option<EndsLate>> = const { std::cell::RefCell::new(None) };
        }
        let slot = claim().expect("a slot");
        let late = LATE_ADDS.load(Ordering::Relaxed);
        std::thread::spawn(move || {
            // Registered before this thread's counters: thread-locals drop
            // in the reverse order, so the call ends after they are gone.
            LATE.with(|l| *l.borrow_mut() = Some(EndsLate(slot)));
            add(slot, 1);
        })
        .join()
        .unwrap();
        assert!(
            LATE_ADDS.load(Ordering::Relaxed) > late,
            "the call ended after the thread's counters were gone"
        );
        assert_eq!(sums()[slot as usize], 0);
    }
}
