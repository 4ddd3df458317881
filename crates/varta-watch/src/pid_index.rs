//! A pid → slot map in 4 bytes per bucket.
//!
//! The tracker keeps its agents in a dense slab and needs an O(1) lookup from a pid to the
//! agent's slot. `HashMap<u32, u32>` spends 9 bytes per bucket; this open-addressing table
//! stores only the slot (+1, so 0 means empty) and finds the pid in the slab itself, which
//! halves the index and keeps the whole per-agent footprint under 64 bytes. Linear probing with
//! Fibonacci hashing; deletion shifts later entries back, so there are no tombstones and
//! lookups never degrade.

/// Open-addressing table of slab slots keyed by the pid stored in each slot.
#[derive(Debug, Clone)]
pub(crate) struct PidIndex {
    buckets: Vec<u32>,
    len: usize,
    shift: u32,
}

impl PidIndex {
    /// A table that holds `capacity` entries without growing.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        // Keep the load factor at or below 3/4.
        let buckets = (capacity.max(4) * 4 / 3 + 1).next_power_of_two();
        Self {
            buckets: vec![0; buckets],
            len: 0,
            shift: 32 - buckets.trailing_zeros(),
        }
    }

    fn home(&self, pid: u32) -> usize {
        (pid.wrapping_mul(0x9E37_79B9) >> self.shift) as usize
    }

    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// The slot of `pid`; `pid_of` reads the pid stored in a slot.
    pub(crate) fn get(&self, pid: u32, pid_of: impl Fn(u32) -> u32) -> Option<u32> {
        let mut i = self.home(pid);
        loop {
            match self.buckets[i] {
                0 => return None,
                entry if pid_of(entry - 1) == pid => return Some(entry - 1),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    /// Records that `pid` lives in `slot` (the pid must not be present).
    pub(crate) fn insert(&mut self, pid: u32, slot: u32, pid_of: impl Fn(u32) -> u32) {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow(&pid_of);
        }
        let mut i = self.home(pid);
        while self.buckets[i] != 0 {
            i = (i + 1) & self.mask();
        }
        self.buckets[i] = slot + 1;
        self.len += 1;
    }

    /// Forgets `pid`; returns its slot.
    pub(crate) fn remove(&mut self, pid: u32, pid_of: impl Fn(u32) -> u32) -> Option<u32> {
        let mask = self.mask();
        let mut i = self.home(pid);
        loop {
            match self.buckets[i] {
                0 => return None,
                entry if pid_of(entry - 1) == pid => break,
                _ => i = (i + 1) & mask,
            }
        }
        let slot = self.buckets[i] - 1;
        // Backward-shift: move later entries of the probe run into the hole when their home
        // position allows it, so every remaining entry stays reachable from its home.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while self.buckets[j] != 0 {
            let home = self.home(pid_of(self.buckets[j] - 1));
            // `j` may move to `hole` if its home is not cyclically within (hole, j].
            let distance_home = j.wrapping_sub(home) & mask;
            let distance_hole = j.wrapping_sub(hole) & mask;
            if distance_home >= distance_hole {
                self.buckets[hole] = self.buckets[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.buckets[hole] = 0;
        self.len -= 1;
        Some(slot)
    }

    /// Rewrites the slot of `pid` (after the slab moved it).
    pub(crate) fn relocate(&mut self, pid: u32, to: u32, pid_of: impl Fn(u32) -> u32) {
        let mut i = self.home(pid);
        while self.buckets[i] != 0 {
            if pid_of(self.buckets[i] - 1) == pid {
                self.buckets[i] = to + 1;
                return;
            }
            i = (i + 1) & self.mask();
        }
    }

    fn grow(&mut self, pid_of: &impl Fn(u32) -> u32) {
        let old = std::mem::take(&mut self.buckets);
        *self = Self::with_capacity(old.len());
        for entry in old.into_iter().filter(|&e| e != 0) {
            let mut i = self.home(pid_of(entry - 1));
            while self.buckets[i] != 0 {
                i = (i + 1) & self.mask();
            }
            self.buckets[i] = entry;
            self.len += 1;
        }
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::PidIndex;

    /// Random inserts and removes against a HashMap model, with a slab that the test owns.
    #[test]
    fn matches_a_hashmap_under_churn() {
        let mut pids: Vec<u32> = Vec::new(); // slab: slot -> pid
        let mut free: Vec<u32> = Vec::new();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut index = PidIndex::with_capacity(8);
        let mut x: u32 = 12345;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Small pid range so collisions and long probe runs are common.
            let pid = 2 + x % 300;
            let slab = pids.clone();
            let pid_of = |slot: u32| slab[slot as usize];
            match model.get(&pid).copied() {
                Some(slot) if x.is_multiple_of(3) => {
                    assert_eq!(index.remove(pid, pid_of), Some(slot), "step {step}");
                    model.remove(&pid);
                    pids[slot as usize] = 0;
                    free.push(slot);
                }
                Some(slot) => assert_eq!(index.get(pid, pid_of), Some(slot), "step {step}"),
                None => {
                    assert_eq!(index.get(pid, pid_of), None, "step {step}");
                    let slot = free.pop().unwrap_or_else(|| {
                        pids.push(0);
                        pids.len() as u32 - 1
                    });
                    pids[slot as usize] = pid;
                    let slab = pids.clone();
                    index.insert(pid, slot, |s: u32| slab[s as usize]);
                    model.insert(pid, slot);
                }
            }
        }
        let slab = pids.clone();
        for (&pid, &slot) in &model {
            assert_eq!(index.get(pid, |s: u32| slab[s as usize]), Some(slot));
        }
    }
}
