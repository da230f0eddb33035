//! Values that arrive by id, and tasks that wait for them, in either order (the value may come
//! first): a benchmark's clients waiting for their sagas' ends as a subscription reports them.
//! Each value is taken once; one not waited for stays until it is (a benchmark's memory, in
//! values, is what it started).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

enum Slot<T> {
    Waiting(oneshot::Sender<(T, Instant)>),
    Arrived(T, Instant),
}

/// See the module.
pub struct Arrivals<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
    arrived: AtomicUsize,
}

impl<T> Default for Arrivals<T> {
    fn default() -> Self {
        Arrivals {
            slots: Mutex::default(),
            arrived: AtomicUsize::new(0),
        }
    }
}

impl<T> Arrivals<T> {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot<T>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `value` arrived for `id` now.
    pub fn arrive(&self, id: &str, value: T) {
        let now = Instant::now();
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots();
        match slots.remove(id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send((value, now));
            }
            _ => {
                slots.insert(id.to_string(), Slot::Arrived(value, now));
            }
        }
    }

    /// How many values arrived so far.
    pub fn count(&self) -> usize {
        self.arrived.load(Ordering::Relaxed)
    }

    /// `id`'s value and when it arrived, waiting `wait` at most.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<(T, Instant), String> {
        let rx = {
            let mut slots = self.slots();
            if let Some(Slot::Arrived(v, at)) = slots.remove(id) {
                return Ok((v, at));
            }
            let (tx, rx) = oneshot::channel();
            slots.insert(id.to_string(), Slot::Waiting(tx));
            rx
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(end)) => Ok(end),
            _ => {
                self.slots().remove(id);
                Err(format!("{id}: nothing within {wait:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_is_had_whether_it_comes_before_or_after_the_wait() {
        let a = std::sync::Arc::new(Arrivals::<u32>::default());
        a.arrive("early", 1);
        assert_eq!(a.wait("early", Duration::ZERO).await.unwrap().0, 1);
        assert!(a.wait("early", Duration::from_millis(10)).await.is_err());
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.wait("late", Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.arrive("late", 2);
        assert_eq!(waiter.await.unwrap().unwrap().0, 2);
        assert_eq!(a.count(), 2);
    }
}
