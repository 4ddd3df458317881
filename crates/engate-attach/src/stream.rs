//! The async poll surface: a live attach is a `futures_core::Stream` of [`Event`]s.
//!
//! `poll_next` takes what the ring holds for this subscriber; if there is nothing, it leaves
//! the task's waker in the subscriber's slot *under the same lock* that emit and close take
//! before waking, so a wake-up can never fall between the check and the registration. The
//! stream yields [`Event::Closed`] once and then ends. [`Event::Empty`] is never yielded.
//!
//! It works on any executor; the crate feature is named `tokio` because that is what it is
//! used with.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::attach::{Attach, Event, Live, Wait};

impl futures_core::Stream for Attach<Live> {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        if this.is_finished() {
            return Poll::Ready(None);
        }
        match this.poll(Wait::Waker(cx.waker())) {
            Event::Empty => Poll::Pending,
            event => Poll::Ready(Some(event)),
        }
    }
}
