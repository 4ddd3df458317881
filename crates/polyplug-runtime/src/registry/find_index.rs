//! The find index: contract id → the contract's providers and the provider policy's choice,
//! read without locks and republished one contract at a time.
//!
//! # Why not one immutable map
//!
//! An immutable map swapped as a whole is simple to read, but every change — one provider of
//! one contract — costs a copy of every contract's entry. This index instead changes in place,
//! so a change touching `k` contracts costs `O(k · p)` (`p`: providers of those contracts),
//! amortized, whatever the number of contracts registered.
//!
//! # Layout
//!
//! An open-addressing hash table (linear probing from a Fibonacci hash of the id) behind one
//! [`ArcCell`], replaced only when it grows. A **cell** is three words:
//!
//! - `key`: a contract id, written once, before the cell is first published, and never changed
//!   while the table lives;
//! - `word`: what [`find`](super::Registry::find) needs, packed in one atomic — never used, no
//!   providers (a *tombstone*: the key stays), ambiguous, or the chosen provider's handle;
//! - `entry`: the providers in registration order and the selection, as one immutable
//!   [`IndexEntry`] behind an [`ArcCell`], for the paths that need the list (`find_from`,
//!   `providers`, the `Ambiguous` error).
//!
//! # Readers
//!
//! [`FindIndex::choice`] loads the table (one hazard-protected load),
//! then walks the probe chain: an acquire load of a cell's `word` — never used ends the chain
//! (absent) — and, if it is used, a relaxed load of its `key`. The key was written before the
//! cell's first release store of `word`, and writers serialize on the registry's mutex, so a
//! reader that sees a used `word` sees its key. Keys never move or change, so a chain seen
//! part-way through a writer's change is still a valid chain: the reader sees the contract's
//! old or new word, each a whole value. `find` therefore costs two hazard-protected
//! loads (table, slot) and a few plain loads.
//!
//! # Writers
//!
//! Writers hold the registry's writer mutex; [`FindIndex::set`] takes the [`IndexBook`] that
//! lives in the writer state as proof. Setting a contract's entry stores the new entry, then
//! the new word (release), into the contract's cell: readers see the old choice or the new one,
//! and an entry at least as new as the word they read. A contract that appears takes the first
//! never-used cell of its chain; one that loses its last provider becomes a tombstone, and
//! takes its own cell back if it returns.
//!
//! When a new contract would fill more than three quarters of the cells (tombstones count),
//! the table is rebuilt without tombstones at twice the next power of two of its live
//! contracts, and swapped in; readers still on the old table finish on it (what they read is
//! a consistent, if older, snapshot — exactly what a whole-map swap gave them). At least a
//! quarter of the new capacity in new ids must arrive before the next rebuild, so rebuilding
//! costs `O(1)` amortized per new contract id, and a change to contracts already present
//! never rebuilds. [`IndexBook`] counts the entries built and the cells moved by rebuilds, so
//! the tests can check the cost and not only the result.

use std::sync::Arc;

use crate::abi::GuestContractHandle;
use crate::sync::{ArcCell, AtomicU64, Ordering};

use super::ProviderInfo;

/// Cells of the first table (and the fewest a rebuild makes).
#[cfg(not(feature = "loom"))]
const MIN_CAPACITY: usize = 16;
/// Under loom every cell is a modelled mutex and two atomics: keep the table small.
#[cfg(feature = "loom")]
const MIN_CAPACITY: usize = 4;

/// `word` of a cell no contract ever used: ends every probe chain through it.
const NEVER: u64 = 0;
/// `word` of a tombstone: the contract in `key` has no provider now.
const NONE: u64 = 1;
/// `word` of a contract with several providers and no choice by the policy.
const AMBIGUOUS: u64 = 2;
// Any other `word` is a chosen handle, `generation << 32 | index`: issued generations start at
// 1, so a handle's word is at least 2^32 and never one of the codes above.

/// The provider policy's choice among a contract's providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Selection {
    /// This provider.
    One(GuestContractHandle),
    /// Several providers and the policy chooses none.
    Ambiguous,
}

impl Selection {
    fn word(self) -> u64 {
        match self {
            Selection::One(handle) => {
                debug_assert!(handle.generation > 0, "an issued handle: {handle}");
                (u64::from(handle.generation) << 32) | u64::from(handle.index)
            }
            Selection::Ambiguous => AMBIGUOUS,
        }
    }
}

/// What the index says about a contract, as [`FindIndex::choice`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// No provider.
    Absent,
    /// Several providers and the policy chooses none.
    Ambiguous,
    /// The policy's provider.
    One(GuestContractHandle),
}

impl Choice {
    #[inline]
    fn from_word(word: u64) -> Self {
        let generation = (word >> 32) as u32;
        if generation != 0 {
            Choice::One(GuestContractHandle {
                index: word as u32,
                generation,
            })
        } else if word == AMBIGUOUS {
            Choice::Ambiguous
        } else {
            Choice::Absent
        }
    }
}

/// One contract's providers (in registration order) and the policy's selection.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) selection: Selection,
    pub(super) providers: Box<[ProviderInfo]>,
}

/// The writer's bookkeeping of the index, kept in the registry's writer state (so holding
/// `&mut` to it means holding the writer mutex).
#[derive(Debug, Default)]
pub(super) struct IndexBook {
    /// Cells of the current table with a key (live contracts and tombstones).
    used: usize,
    /// Contracts with at least one provider.
    live: usize,
    /// Entries stored by [`FindIndex::set`] since the registry was made.
    pub(super) entries_built: u64,
    /// Cells copied by table rebuilds since the registry was made.
    pub(super) cells_moved: u64,
    /// Table rebuilds since the registry was made.
    pub(super) rebuilds: u64,
    /// The loom suite's negative control: rebuilds publish the new table before filling it.
    #[cfg(feature = "loom")]
    pub(super) publish_before_fill: bool,
}

impl IndexBook {
    /// Contracts with at least one provider.
    pub(super) fn live(&self) -> usize {
        self.live
    }
}

struct Cell {
    /// See [`NEVER`], [`NONE`], [`AMBIGUOUS`]; otherwise the chosen handle.
    word: AtomicU64,
    /// The contract id; meaningful once `word` is not [`NEVER`], then never changed.
    key: AtomicU64,
    /// The providers; the shared vacant entry in a never-used cell or a tombstone.
    entry: ArcCell<IndexEntry>,
}

struct Table {
    cells: Box<[Cell]>,
    /// `cells.len() - 1` (the length is a power of two).
    mask: usize,
    /// `64 - log2(cells.len())`: the home cell is the top bits of the id's Fibonacci hash.
    shift: u32,
}

/// Where a writer's probe for a key ended.
enum Probe {
    /// The key's cell.
    Found(usize),
    /// The first never-used cell of the key's chain: the key is not in the table.
    Free(usize),
}

impl Table {
    /// A table of `capacity` cells (a power of two), with `live` entries placed in it.
    fn build(
        capacity: usize,
        vacant: &Arc<IndexEntry>,
        live: Vec<(u64, u64, Arc<IndexEntry>)>,
    ) -> Self {
        let capacity = capacity.next_power_of_two().max(MIN_CAPACITY);
        let mask = capacity - 1;
        let shift = 64 - capacity.trailing_zeros();
        let mut placed: Vec<Option<(u64, u64, Arc<IndexEntry>)>> = Vec::new();
        placed.resize_with(capacity, || None);
        for (key, word, entry) in live {
            let mut i = home(key, shift);
            while placed[i].is_some() {
                i = (i + 1) & mask;
            }
            placed[i] = Some((key, word, entry));
        }
        let cells = placed
            .into_iter()
            .map(|cell| {
                let (key, word, entry) = cell.unwrap_or((0, NEVER, Arc::clone(vacant)));
                Cell {
                    word: AtomicU64::new(word),
                    key: AtomicU64::new(key),
                    entry: ArcCell::new(entry),
                }
            })
            .collect();
        Self { cells, mask, shift }
    }

    /// The cell holding `id` (a live contract or a tombstone), and its word.
    #[inline]
    fn find(&self, id: u64) -> Option<(&Cell, u64)> {
        let mut i = home(id, self.shift);
        for _ in 0..self.cells.len() {
            let cell = self.cells.get(i)?;
            let word = cell.word.load(Ordering::Acquire);
            if word == NEVER {
                return None;
            }
            if cell.key.load(Ordering::Relaxed) == id {
                return Some((cell, word));
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// A writer's probe: `None` only if every cell is used (the load limit makes that
    /// impossible, but a full table is answered by a rebuild, not a panic).
    fn probe(&self, id: u64) -> Option<Probe> {
        let mut i = home(id, self.shift);
        for _ in 0..self.cells.len() {
            let cell = self.cells.get(i)?;
            if cell.word.load(Ordering::Relaxed) == NEVER {
                return Some(Probe::Free(i));
            }
            if cell.key.load(Ordering::Relaxed) == id {
                return Some(Probe::Found(i));
            }
            i = (i + 1) & self.mask;
        }
        None
    }
}

/// The home cell of `id`: the top bits of its Fibonacci hash (contract ids are FNV hashes
/// already, but raw ids from C need not be, and the multiply is one instruction).
#[inline]
fn home(id: u64, shift: u32) -> usize {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// The find index. See the [module documentation](self).
pub(super) struct FindIndex {
    table: ArcCell<Table>,
    /// The entry of never-used cells and tombstones (no providers).
    vacant: Arc<IndexEntry>,
}

impl FindIndex {
    pub(super) fn new() -> Self {
        let vacant = Arc::new(IndexEntry {
            selection: Selection::Ambiguous,
            providers: Box::new([]),
        });
        let table = Table::build(MIN_CAPACITY, &vacant, Vec::new());
        Self {
            table: ArcCell::new(Arc::new(table)),
            vacant,
        }
    }

    /// What `find` needs: the policy's choice for contract `id`.
    #[inline]
    pub(super) fn choice(&self, id: u64) -> Choice {
        let table = self.table.load();
        match table.find(id) {
            Some((_, word)) => Choice::from_word(word),
            None => Choice::Absent,
        }
    }

    /// Contract `id`'s providers and selection; `None` if it has no provider.
    pub(super) fn entry(&self, id: u64) -> Option<Arc<IndexEntry>> {
        let table = self.table.load();
        let (cell, _) = table.find(id)?;
        let entry = cell.entry.load_full();
        (!entry.providers.is_empty()).then_some(entry)
    }

    /// Makes `entry` contract `id`'s entry (`None`: it has no provider any more). Writers
    /// only: `book` lives in the writer state.
    pub(super) fn set(&self, book: &mut IndexBook, id: u64, entry: Option<IndexEntry>) {
        book.entries_built += 1;
        let mut table = self.table.load_full();
        let index = loop {
            match table.probe(id) {
                Some(Probe::Found(index)) => break index,
                // Never indexed: nothing to remove.
                Some(Probe::Free(_)) if entry.is_none() => return,
                Some(Probe::Free(index)) if (book.used + 1) * 4 <= table.cells.len() * 3 => {
                    if let Some(cell) = table.cells.get(index) {
                        cell.key.store(id, Ordering::Relaxed);
                    }
                    book.used += 1;
                    break index;
                }
                // Too full for one more key: rebuild, then probe the new table.
                _ => table = self.rebuild(book, &table),
            }
        };
        let Some(cell) = table.cells.get(index) else {
            return;
        };
        let (entry, word) = match entry {
            Some(entry) => {
                let word = entry.selection.word();
                (Arc::new(entry), word)
            }
            None => (Arc::clone(&self.vacant), NONE),
        };
        let was_live = cell.word.load(Ordering::Relaxed) >= AMBIGUOUS;
        let is_live = word >= AMBIGUOUS;
        // The entry first: a reader that sees the new word sees this entry (or a newer one).
        drop(cell.entry.swap(entry));
        cell.word.store(word, Ordering::Release);
        match (was_live, is_live) {
            (false, true) => book.live += 1,
            (true, false) => book.live -= 1,
            _ => {}
        }
    }

    /// Copies the live cells of `old` into a table sized for them plus room to grow, and
    /// publishes it.
    fn rebuild(&self, book: &mut IndexBook, old: &Table) -> Arc<Table> {
        let live: Vec<(u64, u64, Arc<IndexEntry>)> = old
            .cells
            .iter()
            .filter_map(|cell| {
                let word = cell.word.load(Ordering::Relaxed);
                (word >= AMBIGUOUS).then(|| {
                    (
                        cell.key.load(Ordering::Relaxed),
                        word,
                        cell.entry.load_full(),
                    )
                })
            })
            .collect();
        book.used = live.len();
        book.live = live.len();
        book.cells_moved += live.len() as u64;
        book.rebuilds += 1;
        let capacity = (live.len() + 1).next_power_of_two() * 2;
        #[cfg(feature = "loom")]
        if book.publish_before_fill {
            return self.rebuild_publishing_first(capacity, live);
        }
        let table = Arc::new(Table::build(capacity, &self.vacant, live));
        drop(self.table.swap(Arc::clone(&table)));
        table
    }

    /// A deliberately wrong rebuild for the loom suite's negative control: it publishes the
    /// new table empty and then fills it, so a reader can miss a contract present throughout.
    #[cfg(feature = "loom")]
    fn rebuild_publishing_first(
        &self,
        capacity: usize,
        live: Vec<(u64, u64, Arc<IndexEntry>)>,
    ) -> Arc<Table> {
        let table = Arc::new(Table::build(capacity, &self.vacant, Vec::new()));
        drop(self.table.swap(Arc::clone(&table)));
        for (key, word, entry) in live {
            if let Some(Probe::Free(index)) = table.probe(key)
                && let Some(cell) = table.cells.get(index)
            {
                cell.key.store(key, Ordering::Relaxed);
                drop(cell.entry.swap(entry));
                cell.word.store(word, Ordering::Release);
            }
        }
        table
    }

    /// Cells in the current table (tests check it stays proportionate).
    #[cfg(all(test, not(feature = "loom")))]
    pub(super) fn capacity(&self) -> usize {
        self.table.load().cells.len()
    }

    /// Every (id, entry) of a live contract (tests compare it with a rebuild from scratch).
    #[cfg(all(test, not(feature = "loom")))]
    pub(super) fn live_entries(&self) -> Vec<(u64, Arc<IndexEntry>)> {
        let table = self.table.load();
        table
            .cells
            .iter()
            .filter(|cell| cell.word.load(Ordering::Acquire) >= AMBIGUOUS)
            .map(|cell| (cell.key.load(Ordering::Relaxed), cell.entry.load_full()))
            .collect()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use crate::abi::Version;
    use crate::ids::BundleId;

    fn handle(index: u32) -> GuestContractHandle {
        GuestContractHandle {
            index,
            generation: 1,
        }
    }

    fn entry(index: u32) -> IndexEntry {
        IndexEntry {
            selection: Selection::One(handle(index)),
            providers: Box::new([ProviderInfo {
                bundle: BundleId::new("b"),
                bundle_name: "b".into(),
                handle: handle(index),
                version: Version::new(1, 0, 0),
            }]),
        }
    }

    #[test]
    fn words_round_trip_and_codes_never_collide_with_handles() {
        let extremes = [
            GuestContractHandle {
                index: 0,
                generation: 1,
            },
            GuestContractHandle {
                index: u32::MAX - 64,
                generation: u32::MAX,
            },
        ];
        for h in extremes {
            assert_eq!(Choice::from_word(Selection::One(h).word()), Choice::One(h));
        }
        assert_eq!(
            Choice::from_word(Selection::Ambiguous.word()),
            Choice::Ambiguous
        );
        assert_eq!(Choice::from_word(NONE), Choice::Absent);
        assert_eq!(Choice::from_word(NEVER), Choice::Absent);
    }

    /// Ids that share a home cell chain past each other, tombstones keep chains intact, a
    /// returning id takes its own cell back, and growth keeps every live entry.
    #[test]
    fn chains_tombstones_and_growth_keep_every_entry_reachable() {
        let index = FindIndex::new();
        let mut book = IndexBook::default();
        // Ids with the same home cell in a 16-cell table: the same top 4 bits of the hash.
        let colliding: Vec<u64> = (0u64..)
            .filter(|id| home(*id, 60) == home(7, 60))
            .take(5)
            .collect();
        for (i, id) in colliding.iter().enumerate() {
            index.set(&mut book, *id, Some(entry(i as u32)));
        }
        for (i, id) in colliding.iter().enumerate() {
            assert_eq!(index.choice(*id), Choice::One(handle(i as u32)));
        }
        // Remove the second: the later ones stay reachable past its tombstone.
        index.set(&mut book, colliding[1], None);
        assert_eq!(index.choice(colliding[1]), Choice::Absent);
        assert!(index.entry(colliding[1]).is_none());
        for (i, id) in colliding.iter().enumerate().skip(2) {
            assert_eq!(index.choice(*id), Choice::One(handle(i as u32)));
        }
        let used = book.used;
        index.set(&mut book, colliding[1], Some(entry(40)));
        assert_eq!(book.used, used, "a returning id reuses its tombstone");
        assert_eq!(index.choice(colliding[1]), Choice::One(handle(40)));
        // Removing what was never there is a no-op.
        index.set(&mut book, 0xFFFF, None);
        assert_eq!(book.used, used);

        // Grow well past the first table.
        for id in 1000u64..1500 {
            index.set(&mut book, id, Some(entry(id as u32)));
        }
        assert!(book.rebuilds > 0);
        assert_eq!(book.live(), 505);
        for id in 1000u64..1500 {
            assert_eq!(index.choice(id), Choice::One(handle(id as u32)), "{id}");
        }
        for (i, id) in colliding.iter().enumerate() {
            let expected = if i == 1 { 40 } else { i as u32 };
            assert_eq!(index.choice(*id), Choice::One(handle(expected)));
        }
        assert!(index.capacity() <= 4 * 512, "{}", index.capacity());
    }

    /// Churn of distinct ids (each added, then removed) leaves tombstones; rebuilds clear them
    /// and the table never grows beyond what the live contracts need.
    #[test]
    fn churn_rebuilds_are_amortized_and_the_table_stays_small() {
        let index = FindIndex::new();
        let mut book = IndexBook::default();
        for id in 0u64..10 {
            index.set(&mut book, id, Some(entry(id as u32)));
        }
        let rounds = 10_000u64;
        for id in 100..100 + rounds {
            index.set(&mut book, id, Some(entry(1)));
            index.set(&mut book, id, None);
        }
        assert_eq!(book.live(), 10);
        assert!(index.capacity() <= 64, "{}", index.capacity());
        // Each rebuild moves the 10 or 11 live cells and comes after at least a quarter of the
        // table in new ids.
        assert!(
            book.cells_moved <= rounds,
            "{} cells moved for {rounds} new ids",
            book.cells_moved
        );
        for id in 0u64..10 {
            assert_eq!(index.choice(id), Choice::One(handle(id as u32)));
        }
    }
}
