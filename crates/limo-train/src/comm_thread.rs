//! Collectives on a thread of their own, so that ZeRO-3 can start the all-gather of the next
//! layer (and the reduce-scatter of the last one's gradient) and compute meanwhile: the
//! prefetch of docs/ARCHITECTURE.md. Jobs run one at a time in submission order, so every rank
//! still issues the same collectives in the same order, which is all the backends require.
//!
//! On a GPU the thread is not needed: NCCL's collectives are enqueued on a communication stream
//! and return at once (`Communicator::start_*`), so the overlap happens on the device.
//! `CommThread::inline` runs the jobs on the caller's thread instead, with the same interface.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use anyhow::anyhow;
use candle_core::Tensor;
use limo_dist::comm::Communicator;

type Job = Box<dyn FnOnce(&dyn Communicator) + Send>;

/// A communicator whose collectives may run behind the caller's back.
pub struct CommThread {
    rank: usize,
    world: usize,
    inner: Inner,
}

enum Inner {
    Thread {
        jobs: Option<Sender<Job>>,
        worker: Option<JoinHandle<()>>,
    },
    Inline(Box<dyn Communicator>),
}

/// The result of a submitted collective; `wait` blocks until it is done.
pub struct Pending<T>(Receiver<anyhow::Result<T>>);

impl<T> Pending<T> {
    pub fn wait(self) -> anyhow::Result<T> {
        self.0
            .recv()
            .map_err(|_| anyhow!("the communication thread stopped"))?
    }
}

impl CommThread {
    /// Collectives on a new thread.
    pub fn spawn(comm: Box<dyn Communicator>) -> Self {
        let (rank, world) = (comm.rank(), comm.world_size());
        let (jobs, inbox) = channel::<Job>();
        let worker = std::thread::Builder::new()
            .name(format!("limo-comm-{rank}"))
            .spawn(move || {
                for job in inbox {
                    job(comm.as_ref());
                }
            })
            .expect("spawning the communication thread");
        Self {
            rank,
            world,
            inner: Inner::Thread {
                jobs: Some(jobs),
                worker: Some(worker),
            },
        }
    }

    /// Collectives on the caller's thread, at submission.
    pub fn inline(comm: Box<dyn Communicator>) -> Self {
        Self {
            rank: comm.rank(),
            world: comm.world_size(),
            inner: Inner::Inline(comm),
        }
    }

    /// Queues `f`; its result arrives through the returned [`Pending`].
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Communicator) -> anyhow::Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = channel();
        match &self.inner {
            Inner::Thread { jobs, .. } => {
                let job: Job = Box::new(move |comm| {
                    let _ = tx.send(f(comm));
                });
                // A send fails only when the worker is gone; `wait` then reports it.
                let _ = jobs.as_ref().expect("open until dropped").send(job);
            }
            Inner::Inline(comm) => {
                let _ = tx.send(f(comm.as_ref()));
            }
        }
        Pending(rx)
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Communicator) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.submit(f).wait()
    }
}

impl Drop for CommThread {
    fn drop(&mut self) {
        if let Inner::Thread { jobs, worker } = &mut self.inner {
            drop(jobs.take());
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
    }
}

impl Communicator for CommThread {
    limo_dist::rank_world_fields!();

    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let input = input.clone();
        self.run(move |c| c.all_gather(&input))
    }

    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let input = input.clone();
        self.run(move |c| c.reduce_scatter(&input))
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let input = input.clone();
        self.run(move |c| c.all_reduce(&input))
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        let input = input.clone();
        self.run(move |c| c.broadcast(&input, root))
    }

    fn barrier(&self) -> anyhow::Result<()> {
        self.run(|c| c.barrier())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_core::Device;
    use limo_dist::comm::thread_group;

    use super::*;

    #[test]
    fn queued_collectives_keep_their_order_and_results() {
        for threaded in [true, false] {
            let handles: Vec<_> = thread_group(3, Duration::from_secs(10))
                .into_iter()
                .map(|c| {
                    std::thread::spawn(move || {
                        let rank = c.rank() as f32;
                        let comm = if threaded {
                            CommThread::spawn(Box::new(c))
                        } else {
                            CommThread::inline(Box::new(c))
                        };
                        // Three collectives in flight at once, waited for out of order.
                        let mine = Tensor::new(&[rank, rank + 10.0, 0.0], &Device::Cpu).unwrap();
                        let a = mine.clone();
                        let gather = comm.submit(move |c| c.all_gather(&a));
                        let b = mine.clone();
                        let scatter = comm.submit(move |c| c.reduce_scatter(&b));
                        let sum = comm.all_reduce(&mine).unwrap();
                        let scatter = scatter.wait().unwrap().to_vec1::<f32>().unwrap();
                        let gather = gather.wait().unwrap().to_vec1::<f32>().unwrap();
                        (gather, scatter, sum.to_vec1::<f32>().unwrap())
                    })
                })
                .collect();
            for (rank, h) in handles.into_iter().enumerate() {
                let (gather, scatter, sum) = h.join().unwrap();
                assert_eq!(gather, [0., 10., 0., 1., 11., 0., 2., 12., 0.]);
                assert_eq!(sum, [3.0, 33.0, 0.0]);
                assert_eq!(scatter, [[3.0], [33.0], [0.0]][rank]);
            }
        }
    }

    #[test]
    fn a_failed_collective_reaches_the_waiter() {
        let mut group = thread_group(2, Duration::from_millis(100));
        let _absent = group.pop();
        let comm = CommThread::spawn(Box::new(group.pop().unwrap()));
        let err = comm.barrier().unwrap_err().to_string();
        assert!(err.contains("timed out") && err.contains("[1]"), "{err}");
    }
}
