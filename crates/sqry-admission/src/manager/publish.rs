//! Publishing: a reservation trued up to the measured size, swapped into the slot under a
//! rollback guard and committed to the ledger; the previous version stays counted, as retained,
//! until its last reader drops it.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc as StdArc;
use std::sync::atomic::Ordering;

use crate::HeapSize;
use crate::entry::{EntryState, SlotTxn};
use crate::error::{PublishError, key_text};
use crate::failpoint;
use crate::ledger::{Handle, Rejection};
use crate::sync::Arc;

use super::AdmissionManager;
use super::admission::Reservation;

impl<K, V> AdmissionManager<K, V>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    V: HeapSize + Send + Sync + 'static,
{
    // ----- publishing -----

    /// Publishes `value` under `reservation` as the key's current version.
    ///
    /// The value is measured ([`HeapSize`]); if it is larger than reserved, the reservation
    /// grows first (evicting what can be freed if needed), counting every tier — the version
    /// being replaced included. Then, with the map read-locked and the slot write-locked, the
    /// entry is checked (still registered, not evicted), the slot swapped under a rollback
    /// guard and the ledger committed; the previous version moves to retained and is dropped
    /// after the locks are released, which credits it at once if no reader holds it. The hook
    /// runs last, with no lock held.
    ///
    /// # Errors
    ///
    /// [`PublishError::Evicted`] if the entry was evicted meanwhile (nothing published),
    /// [`PublishError::Oversize`] if the measured value does not fit. The reservation is
    /// refunded either way and the entry keeps its previous version.
    pub fn publish(
        &self,
        reservation: Reservation<K, V>,
        value: V,
    ) -> Result<Handle<V>, PublishError> {
        let key = reservation.entry.key.clone();
        if !std::ptr::eq(reservation.manager.as_ptr(), StdArc::as_ptr(&self.shared)) {
            return Err(PublishError::ForeignReservation {
                key: key_text(&key),
            });
        }
        let handle = self.publish_inner(reservation, value)?;
        if let Some(hook) = self.hook() {
            hook.on_publish(&key, &handle);
        }
        Ok(handle)
    }

    pub(super) fn publish_inner(
        &self,
        reservation: Reservation<K, V>,
        value: V,
    ) -> Result<Handle<V>, PublishError> {
        let Reservation {
            mut grant,
            entry,
            estimate,
            class,
            initial,
            ..
        } = reservation;
        let ledger = &self.shared.ledger;
        if entry.cancelled.load(Ordering::Acquire) {
            // Evicted while building: do not evict others to make room for it.
            return Err(PublishError::Evicted {
                key: key_text(&entry.key),
            });
        }
        let measured = value.heap_bytes() as u64;
        if measured > grant.bytes() {
            let extra = measured - grant.bytes();
            // The growth queues ahead of newcomers, so the bytes the evictions free go to this
            // finished build first.
            let grown = ledger.grow_ahead_of_queue(&mut grant, extra, || {
                let snapshot = ledger.snapshot();
                self.evict_for(extra, &snapshot, Some(&entry.key));
            });
            if let Err(snapshot) = grown {
                ledger.count_rejection(Rejection::AtPublish);
                return Err(PublishError::Oversize {
                    key: key_text(&entry.key),
                    measured,
                    reserved: grant.bytes(),
                    ledger: Box::new(snapshot),
                });
            }
        }
        self.learn(class, estimate, initial, measured);
        let version = ledger.stage(value, measured);
        let handle = Handle::from_arc(Arc::clone(&version));
        let previous = {
            let map = self.shared.entries.read();
            let member = map
                .get(&entry.key)
                .is_some_and(|e| StdArc::ptr_eq(e, &entry));
            let slot = entry.slot.write();
            if !member || entry.cancelled.load(Ordering::Acquire) {
                return Err(PublishError::Evicted {
                    key: key_text(&entry.key),
                });
            }
            let mut txn = SlotTxn::begin(slot, &entry.bytes);
            let previous_id = txn.swap_in(version, measured);
            failpoint::hit("publish.after_swap");
            if let Err(snapshot) = ledger.commit(&mut grant, handle.arc(), previous_id) {
                // Unreachable in practice (the grant was grown to the measured size above);
                // the transaction rolls the slot back as it drops.
                return Err(PublishError::Oversize {
                    key: key_text(&entry.key),
                    measured,
                    reserved: grant.bytes(),
                    ledger: Box::new(snapshot),
                });
            }
            entry.set_state(EntryState::Loaded);
            entry.peak_bytes.fetch_max(measured, Ordering::AcqRel);
            let previous = txn.commit();
            drop(map);
            previous
        };
        drop(previous);
        entry.record_success();
        entry.touch(self.now_ns());
        Ok(handle)
    }
}
