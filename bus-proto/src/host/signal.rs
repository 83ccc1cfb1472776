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
/// closed). Each waiter has a key, given on its first registration, and
/// removes itself when its wait ends or is dropped, so this holds at most
/// one waker per wait in progress. All are woken on every change and
/// check their own condition.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    next_key: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Waiters {
    /// Registers, or refreshes, the waker of the waiter `key`.
    pub(crate) fn register(&mut self, key: &mut Option<u64>, cx: &Context<'_>) {
        let key = *key.get_or_insert_with(|| {
            self.next_key = self.next_key.wrapping_add(1);
            self.next_key
        });
        match self.wakers.iter_mut().find(|(held, _)| *held == key) {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((_, waker)) => *waker = cx.waker().clone(),
            None => self.wakers.push((key, cx.waker().clone())),
        }
    }

    /// The waiter `key` stopped waiting.
    pub(crate) fn deregister(&mut self, key: u64) {
        self.wakers.retain(|(held, _)| *held != key);
    }

    pub(crate) fn notify_all(&mut self) {
        for (_, waker) in self.wakers.drain(..) {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.wakers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{Signal, Waiters};
    use core::task::{Context, Poll, Waker};

    #[test]
    fn a_waiter_registered_again_takes_one_place_and_leaves_when_done() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiters = Waiters::default();
        let (mut first, mut second) = (None, None);
        for _ in 0..3 {
            waiters.register(&mut first, &cx);
            waiters.register(&mut second, &cx);
        }
        assert_eq!(waiters.len(), 2);
        waiters.deregister(first.expect("a key"));
        assert_eq!(waiters.len(), 1);
        waiters.notify_all();
        assert_eq!(waiters.len(), 0);
        // Woken waiters register again under their keys.
        waiters.register(&mut second, &cx);
        assert_eq!(waiters.len(), 1);

        let mut signal = Signal::default();
        assert_eq!(signal.poll(&mut cx), Poll::Pending);
        signal.notify();
        signal.notify();
        assert_eq!(signal.poll(&mut cx), Poll::Ready(()), "kept until polled");
        assert_eq!(
            signal.poll(&mut cx),
            Poll::Pending,
            "several collapse into one"
        );
    }
}
