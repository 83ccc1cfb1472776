//! Wake-ups between tasks. Both types live inside the driver's mutex, so a
//! check of the state and the registration of a waker happen under one
//! lock and no wake-up is lost.

use core::task::{Context, Poll, Waker};
use std::vec::Vec;

/// Wakes one task; a wake-up that comes while the task is busy is kept
/// until it next waits.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    pending: bool,
    waker: Option<Waker>,
}

impl Signal {
    pub(crate) fn notify(&mut self) {
        self.pending = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Ready once per [`Signal::notify`] (several collapse into one).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if core::mem::take(&mut self.pending) {
            return Poll::Ready(());
        }
        match &mut self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Tasks waiting for a change of the state (a queue with room, a socket
/// closed). Bounded by the number of distinct tasks waiting at once: a task
/// that polls again replaces nothing and adds nothing. All are woken on
/// every change and check their own condition.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    wakers: Vec<Waker>,
}

impl Waiters {
    pub(crate) fn register(&mut self, cx: &Context<'_>) {
        if !self.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            self.wakers.push(cx.waker().clone());
        }
    }

    pub(crate) fn notify_all(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}
