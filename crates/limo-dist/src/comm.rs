//! Collectives between ranks, behind one trait so that ZeRO-3 is written once: NCCL on GPUs
//! (the `cuda` build), and an in-process backend whose ranks are threads, used by the tests and
//! by CPU runs. Collectives work on flat 1-D tensors, the layout of ZeRO-3's parameter groups.
//!
//! The thread backend reduces in rank order 0, 1, .., N-1 on every rank, so every rank gets
//! bit-identical results and a run is reproducible whatever the thread timing.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};

/// The `rank` and `world_size` methods of a [`Communicator`] whose struct keeps both as fields
/// `rank` and `world` (most backends): `impl Communicator for X { rank_world_fields!(); .. }`.
#[macro_export]
macro_rules! rank_world_fields {
    () => {
        fn rank(&self) -> usize {
            self.rank
        }

        fn world_size(&self) -> usize {
            self.world
        }
    };
}

pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank's `input` (same length on all ranks) concatenated in rank order.
    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.start_all_gather(input)?.finish()
    }
    /// Sums `input` (length divisible by the world size) over ranks; rank r gets chunk r.
    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.start_reduce_scatter(input)?.finish()
    }
    /// Sums `input` over ranks; every rank gets the whole sum.
    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.start_all_reduce(input)?.finish()
    }
    /// Rank `root`'s `input` on every rank.
    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor>;
    fn barrier(&self) -> anyhow::Result<()>;

    /// Starts [`Self::all_gather`]; the result may be used only after [`Started::finish`].
    /// Backends that run collectives beside the computation (NCCL on its own CUDA stream)
    /// return at once and implement the `start_*` methods; the others finish before returning
    /// and implement the plain ones. Each backend implements one of each pair (the defaults
    /// call each other).
    fn start_all_gather(&self, input: &Tensor) -> anyhow::Result<Started> {
        Ok(Started::ready(self.all_gather(input)?))
    }

    /// Starts [`Self::reduce_scatter`], as [`Self::start_all_gather`].
    fn start_reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Started> {
        Ok(Started::ready(self.reduce_scatter(input)?))
    }

    /// Starts [`Self::all_reduce`], as [`Self::start_all_gather`].
    fn start_all_reduce(&self, input: &Tensor) -> anyhow::Result<Started> {
        Ok(Started::ready(self.all_reduce(input)?))
    }
}

/// The result of a started collective: a tensor that may still be being written, and the fence
/// that orders the caller's later work after the write (on CUDA, the compute stream waits for
/// the communication stream; no host thread waits). Dropped unfinished, it still runs the fence,
/// so the buffers the collective reads are never freed under it.
pub struct Started {
    tensor: Option<Tensor>,
    fence: Option<Fence>,
}

type Fence = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

impl Started {
    /// A result that is already complete.
    pub fn ready(tensor: Tensor) -> Self {
        Self {
            tensor: Some(tensor),
            fence: None,
        }
    }

    /// `tensor`, usable after `fence` has run.
    pub fn fenced(tensor: Tensor, fence: Fence) -> Self {
        Self {
            tensor: Some(tensor),
            fence: Some(fence),
        }
    }

    /// The result, ordered before everything the caller does next.
    pub fn finish(mut self) -> anyhow::Result<Tensor> {
        if let Some(fence) = self.fence.take() {
            fence()?;
        }
        Ok(self.tensor.take().expect("taken only here"))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(fence) = self.fence.take() {
            let _ = fence();
        }
    }
}

/// State shared by the threads of one group: one slot per rank and a generation counter.
struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Exchange>,
    changed: Condvar,
}

struct Exchange {
    /// Contributions of the collective in progress, by rank.
    slots: Vec<Option<Vec<f64>>>,
    /// Ranks that have read the result of the current generation.
    readers: usize,
    generation: u64,
}

/// One rank of an in-process group.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

/// A group of `world` ranks living in threads of this process; every wait gives up after
/// `timeout` with an error naming the ranks that never arrived.
pub fn thread_group(world: usize, timeout: Duration) -> Vec<ThreadComm> {
    let shared = Arc::new(Shared {
        world,
        timeout,
        state: Mutex::new(Exchange {
            slots: vec![None; world],
            readers: 0,
            generation: 0,
        }),
        changed: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadComm {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

impl ThreadComm {
    /// Deposits this rank's values, waits for all ranks, and returns every rank's values in
    /// rank order. Values travel as f64 so f32 and f64 tensors both round-trip exactly.
    fn exchange(&self, values: Vec<f64>) -> anyhow::Result<Vec<Vec<f64>>> {
        let s = &self.shared;
        let mut st = s.state.lock().expect("no rank panicked holding the lock");
        // Wait until the previous collective has been read by everyone.
        while st.slots[self.rank].is_some() {
            st = wait(s, st, self.rank)?;
        }
        let generation = st.generation;
        st.slots[self.rank] = Some(values);
        s.changed.notify_all();
        while st.generation == generation && st.slots.iter().any(Option::is_none) {
            st = wait(s, st, self.rank)?;
        }
        let all: Vec<Vec<f64>> = st
            .slots
            .iter()
            .map(|v| v.clone().expect("all arrived"))
            .collect();
        st.readers += 1;
        if st.readers == s.world {
            st.readers = 0;
            st.generation += 1;
            st.slots.iter_mut().for_each(|v| *v = None);
            s.changed.notify_all();
        } else {
            // Keep the slots until the last reader is done; later collectives wait above.
            while st.generation == generation {
                st = wait(s, st, self.rank)?;
            }
        }
        Ok(all)
    }
}

fn wait<'a>(
    s: &'a Shared,
    guard: std::sync::MutexGuard<'a, Exchange>,
    rank: usize,
) -> anyhow::Result<std::sync::MutexGuard<'a, Exchange>> {
    let (guard, result) = s
        .changed
        .wait_timeout(guard, s.timeout)
        .expect("no rank panicked holding the lock");
    if result.timed_out() {
        let missing: Vec<usize> = (0..s.world).filter(|&r| guard.slots[r].is_none()).collect();
        bail!(
            "rank {rank}: collective timed out after {:?} waiting for ranks {}",
            s.timeout,
            crate::rank_list(&missing)
        );
    }
    Ok(guard)
}

fn to_values(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}

fn from_values(values: Vec<f64>, like: &Tensor) -> anyhow::Result<Tensor> {
    let n = values.len();
    Ok(Tensor::from_vec(values, n, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())?)
}

/// Sum of the ranks' vectors, added in rank order.
fn sum_in_rank_order(all: &[Vec<f64>]) -> anyhow::Result<Vec<f64>> {
    let len = all[0].len();
    if let Some(r) = all.iter().position(|v| v.len() != len) {
        bail!("rank {r} contributed {} values, rank 0 {len}", all[r].len());
    }
    let mut sum = all[0].clone();
    for v in &all[1..] {
        sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
    }
    Ok(sum)
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let all = self.exchange(to_values(input)?)?;
        from_values(all.concat(), input)
    }

    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let world = self.world_size();
        let n = input.elem_count();
        if !n.is_multiple_of(world) {
            bail!("reduce_scatter: {n} values do not split over {world} ranks");
        }
        let sum = sum_in_rank_order(&self.exchange(to_values(input)?)?)?;
        let chunk = n / world;
        from_values(
            sum[self.rank * chunk..(self.rank + 1) * chunk].to_vec(),
            input,
        )
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let sum = sum_in_rank_order(&self.exchange(to_values(input)?)?)?;
        from_values(sum, input)
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        let mut all = self.exchange(to_values(input)?)?;
        let values = all
            .get_mut(root)
            .with_context(|| format!("broadcast: no rank {root}"))?;
        from_values(std::mem::take(values), input)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        self.exchange(Vec::new()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every rank of a fresh group, in threads; returns the results by rank.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(&ThreadComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = thread_group(world, Duration::from_secs(10))
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(&c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn vec(t: Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    #[test]
    fn collectives_compute_what_they_promise() {
        for world in [1, 2, 3, 4] {
            let results = on_ranks(world, move |c| {
                let r = c.rank() as f32;
                // Rank r contributes [r*10 + i for i in 0..2*world].
                let mine: Vec<f32> = (0..2 * world).map(|i| r * 10.0 + i as f32).collect();
                let t = Tensor::new(mine.as_slice(), &Device::Cpu).unwrap();
                let gathered = vec(c
                    .all_gather(&Tensor::new(&[r, r + 0.5], &Device::Cpu).unwrap())
                    .unwrap());
                let scattered = vec(c.reduce_scatter(&t).unwrap());
                let reduced = vec(c.all_reduce(&t).unwrap());
                let from_last = vec(c
                    .broadcast(&Tensor::new(&[r], &Device::Cpu).unwrap(), world - 1)
                    .unwrap());
                c.barrier().unwrap();
                (gathered, scattered, reduced, from_last)
            });
            let rank_sum: f32 = (0..world).map(|r| r as f32 * 10.0).sum();
            for (rank, (gathered, scattered, reduced, from_last)) in results.into_iter().enumerate()
            {
                let expect_gather: Vec<f32> = (0..world)
                    .flat_map(|r| [r as f32, r as f32 + 0.5])
                    .collect();
                assert_eq!(gathered, expect_gather);
                let expect_reduce: Vec<f32> = (0..2 * world)
                    .map(|i| rank_sum + (world * i) as f32)
                    .collect();
                assert_eq!(reduced, expect_reduce);
                assert_eq!(scattered, expect_reduce[2 * rank..2 * rank + 2].to_vec());
                assert_eq!(from_last, vec![(world - 1) as f32]);
            }
        }
    }

    #[test]
    fn many_collectives_in_a_row_stay_in_step() {
        let results = on_ranks(3, |c| {
            let mut acc = 0.0f64;
            for i in 0..200 {
                let t = Tensor::new(&[(c.rank() * 1000 + i) as f64], &Device::Cpu).unwrap();
                acc += c.all_reduce(&t).unwrap().to_vec1::<f64>().unwrap()[0];
            }
            acc
        });
        assert!(results.iter().all(|&r| r == results[0]));
        let expect: f64 = (0..200).map(|i| (3000 + 3 * i) as f64).sum();
        assert_eq!(results[0], expect);
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let mut group = thread_group(3, Duration::from_millis(200));
        let absent = group.pop().unwrap();
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| std::thread::spawn(move || c.barrier().unwrap_err().to_string()))
            .collect();
        for h in handles {
            let err = h.join().unwrap();
            assert!(err.contains("timed out") && err.contains("[2]"), "{err}");
        }
        drop(absent);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let results = on_ranks(2, |c| {
            let t = Tensor::zeros(c.rank() + 1, candle_core::DType::F32, &Device::Cpu).unwrap();
            c.all_reduce(&t).is_err()
        });
        assert!(results.iter().all(|&e| e));
    }
}
