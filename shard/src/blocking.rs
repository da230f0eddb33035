//! Work that may block on a disk: on tokio's blocking pool in a multi-threaded runtime (the
//! server), so the runtime's workers never stall on a read; inline in a current-thread runtime
//! (the simulator, whose disks are memory and whose schedule must follow from its seed alone —
//! a pool thread finishing at some real-time moment would not).

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f` off the runtime's workers (or inline, see the module); `Err` names why the task
/// failed (it panicked or was cancelled).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let inline = Handle::try_current()
        .map(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
        .unwrap_or(true);
    if inline {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn inline_on_a_current_thread_runtime() {
        let here = std::thread::current().id();
        assert_eq!(run(move || std::thread::current().id()).await, Ok(here));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_the_pool_on_a_multi_threaded_runtime() {
        let here = std::thread::current().id();
        let there = run(move || std::thread::current().id()).await;
        assert!(there.is_ok_and(|t| t != here));
    }
}
