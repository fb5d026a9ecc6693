//! Ownership of background tasks: a task lives exactly as long as its guard.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so reapers, pingers and listeners never outlive the
/// server that started them.
#[derive(Debug)]
pub struct TaskGuard(JoinHandle<()>);

impl TaskGuard {
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
