//! A shard-local notifier: tasks wait for a condition, a producer of that condition wakes them.
//! Single-threaded (`!Send`); no borrow is held across an await.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every waiting task; each re-checks its condition.
    pub fn notify_all(&self) {
        let ws = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in ws {
            w.wake();
        }
    }

    /// Resolves once `cond()` is true, re-checked at every [`Notify::notify_all`].
    pub fn wait_until<'a, F: Fn() -> bool + 'a>(
        &'a self,
        cond: F,
    ) -> impl Future<Output = ()> + 'a {
        WaitUntil { notify: self, cond }
    }

    /// Resolves at the next [`Notify::notify_all`].
    pub async fn notified(&self) {
        let first = std::cell::Cell::new(true);
        self.wait_until(|| !first.replace(false)).await
    }
}

struct WaitUntil<'a, F> {
    notify: &'a Notify,
    cond: F,
}

impl<F: Fn() -> bool> Future for WaitUntil<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if (self.cond)() {
            return Poll::Ready(());
        }
        let mut ws = self.notify.waiters.borrow_mut();
        if !ws.iter().any(|w| w.will_wake(cx.waker())) {
            ws.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
