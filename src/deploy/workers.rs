//! Deploy worker threads: a fixed number of threads fed by a bounded queue, so a long migration never
//! runs on the event loop and a burst of deploys is refused (503) instead of piling up.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A unit of deploy work; it reports its own result through the server's notifier.
pub type Task = Box<dyn FnOnce() + Send + 'static>;

/// The worker pool.
pub struct Workers {
    tx: Option<SyncSender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `threads` workers and room for `queue` tasks waiting.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Workers> {
        let (tx, rx) = sync_channel::<Task>(queue);
        let rx: Arc<Mutex<Receiver<Task>>> = Arc::new(Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            handles.push(std::thread::Builder::new().name(format!("deploy-{i}")).spawn(move || {
                loop {
                    // Hold the lock only to take a task, never while running it.
                    let task = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(t) => {
                            // A panicking deploy must not take the worker down with it.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(t));
                        }
                        Err(_) => return,
                    }
                }
            })?);
        }
        Ok(Workers { tx: Some(tx), threads: handles })
    }

    /// Queues a task; `Err` gives it back when the queue is full.
    pub fn try_submit(&self, task: Task) -> Result<(), Task> {
        match &self.tx {
            Some(tx) => match tx.try_send(task) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(t)) | Err(TrySendError::Disconnected(t)) => Err(t),
            },
            None => Err(task),
        }
    }

    /// Stops taking tasks and waits for the running ones until `deadline`; threads still busy then are
    /// left to the process exit.
    pub fn shutdown(&mut self, deadline: std::time::Instant) {
        self.tx = None;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn runs_tasks_and_refuses_when_full() {
        let w = Workers::new(1, 1).unwrap();
        let (gate_tx, gate_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<u32>();
        let d1 = done_tx.clone();
        assert!(
            w.try_submit(Box::new(move || {
                gate_rx.recv().unwrap();
                d1.send(1).unwrap();
            }))
            .is_ok()
        );
        // Give the worker time to take the first task so the queue slot is free.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let d2 = done_tx.clone();
        assert!(w.try_submit(Box::new(move || d2.send(2).unwrap())).is_ok());
        assert!(w.try_submit(Box::new(|| {})).is_err(), "queue of 1 is full");
        gate_tx.send(()).unwrap();
        assert_eq!(done_rx.recv().unwrap(), 1);
        assert_eq!(done_rx.recv().unwrap(), 2);
    }

    #[test]
    fn survives_a_panicking_task() {
        let w = Workers::new(1, 4).unwrap();
        let (tx, rx) = channel();
        assert!(w.try_submit(Box::new(|| panic!("boom"))).is_ok());
        assert!(w.try_submit(Box::new(move || tx.send(7).unwrap())).is_ok());
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
