//! The update of `train.optimizer_offload = "cpu"`: the fp32 master weights and Adam moments
//! live in host memory and AdamW runs on the host's cores, on a thread of its own, group by group
//! in group order, while the device goes on with the next step's forward. Each group's new
//! compute slice "arrives" as soon as it is ready, and the forward takes it just before the
//! group's first all-gather ([`super::ShardedModel`]'s `settle`): the host update of the last
//! layers overlaps the forward of the first ones.
//!
//! On CUDA (bf16 compute, fp32 master) the gradient slices go down to pinned buffers on a copy
//! stream right after the backward, the update reads them there, writes the bf16 slice into a
//! pinned buffer in the same pass, and the copy stream uploads it in place into the group's
//! compute slice on the GPU (`limo_ops::cuda::offload`). On the CPU device the same thread, the
//! same order and the same arithmetic run with the gradients already in host memory, so every
//! CPU test of offload (bit-identical to no offload, resume) exercises this code.

use std::ops::Range;
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;

use anyhow::anyhow;
use candle_core::{DType, Tensor};
use limo_ops::{adamw_update_state, AdamWStep};

#[cfg(feature = "cuda")]
use limo_ops::cuda::offload::HostLink;

/// A group's updated compute slice, as handed back to the model.
pub(super) enum Arrival {
    /// A new tensor on the compute device (the CPU device: a copy or cast of the master).
    Slice(Tensor),
    /// Written in place on the GPU by the copy stream; the compute stream waits for the event.
    #[cfg(feature = "cuda")]
    Uploaded(limo_ops::cuda::offload::CudaEvent),
}

/// What the host thread works from.
pub(super) enum Work {
    /// Gradients already in host memory (the CPU device); slices come back in `dtype`.
    Host { grads: Vec<Tensor>, dtype: DType },
    /// Gradients being copied down into `link`'s pinned buffers (`events`, one per group);
    /// `grads` stay alive until their copies are done; `slices` are the GPU compute slices the
    /// uploads write.
    #[cfg(feature = "cuda")]
    Pinned {
        link: HostLink,
        events: Vec<limo_ops::cuda::offload::CudaEvent>,
        grads: Vec<Tensor>,
        slices: Vec<Tensor>,
    },
}

/// What the host thread gives back when it is done: the staging buffers, for the next step.
#[derive(Default)]
pub(super) struct Returned {
    #[cfg(feature = "cuda")]
    pub link: Option<HostLink>,
}

/// An update in progress on the host thread.
pub(super) struct InFlight {
    arrivals: Receiver<anyhow::Result<Arrival>>,
    /// Groups handed back so far (they come in group order).
    pub received: usize,
    worker: Option<JoinHandle<Returned>>,
}

impl InFlight {
    /// The next group's arrival; waits for the host thread.
    pub fn next(&mut self) -> anyhow::Result<Arrival> {
        let arrival = self
            .arrivals
            .recv()
            .map_err(|_| anyhow!("the optimizer offload thread stopped"))??;
        self.received += 1;
        Ok(arrival)
    }

    /// Waits for the host thread to end and returns what it kept.
    pub fn join(mut self) -> anyhow::Result<Returned> {
        let worker = self.worker.take().expect("joined once");
        worker
            .join()
            .map_err(|_| anyhow!("the optimizer offload thread panicked"))
    }
}

/// An update dropped before its last group arrived (an error mid-step, the end of a run): the
/// thread is told to stop (its next send fails) and waited for, so that no CUDA call of it
/// outlives the model or races the process's exit.
impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.arrivals = channel().1;
            let returned = worker.join();
            // Uploads it queued that nobody received may still be writing the compute slices.
            #[cfg(feature = "cuda")]
            if let Ok(Returned { link: Some(link) }) = &returned {
                let _ = link.drain();
            }
            drop(returned);
        }
    }
}

/// Starts the update `hyper` of every group's `state` (`[master | m | v]` in host memory) on a
/// new thread; `skip_decay`: per group, the ranges weight decay skips.
pub(super) fn start(
    state: Vec<Tensor>,
    hyper: AdamWStep,
    skip_decay: Vec<Vec<Range<usize>>>,
    work: Work,
) -> InFlight {
    let (tx, arrivals) = channel();
    let worker = std::thread::Builder::new()
        .name("limo-offload".into())
        .spawn(move || {
            match work {
                Work::Host { grads, dtype } => {
                    for ((st, grad), skip) in state.iter().zip(&grads).zip(&skip_decay) {
                        let arrival = host_group(st, grad, &hyper, skip, dtype);
                        let failed = arrival.is_err();
                        if tx.send(arrival).is_err() || failed {
                            break;
                        }
                    }
                    Returned::default()
                }
                #[cfg(feature = "cuda")]
                Work::Pinned {
                    mut link,
                    events,
                    grads,
                    slices,
                } => {
                    // Freeing the gradients below needs the context current on this thread.
                    if let Err(e) = link.bind() {
                        let _ = tx.send(Err(e.into()));
                        for e in &events {
                            let _ = e.synchronize();
                        }
                        return Returned { link: Some(link) };
                    }
                    let mut grads: Vec<Option<Tensor>> = grads.into_iter().map(Some).collect();
                    for g in 0..events.len() {
                        // The next step allocates its gradients while this thread works: free
                        // each old one as soon as its copy has landed, not after the last group.
                        for (grad, event) in grads.iter_mut().zip(&events) {
                            if grad.is_some() && event.is_complete() {
                                *grad = None;
                            }
                        }
                        let (st, slice, skip) = (&state[g], &slices[g], &skip_decay[g]);
                        let arrival =
                            pinned_group(&mut link, g, &events[g], st, slice, &hyper, skip);
                        let failed = arrival.is_err();
                        if tx.send(arrival).is_err() || failed {
                            break;
                        }
                    }
                    // The rest may be freed only once no copy reads them any more.
                    for e in &events {
                        let _ = e.synchronize();
                    }
                    drop(grads);
                    Returned { link: Some(link) }
                }
            }
        })
        .expect("spawning the optimizer offload thread");
    InFlight {
        arrivals,
        received: 0,
        worker: Some(worker),
    }
}

/// One group on the CPU device: the update in place, then the compute slice as the
/// non-offloaded step makes it (a copy of the master, or its cast).
fn host_group(
    state: &Tensor,
    grad: &Tensor,
    hyper: &AdamWStep,
    skip_decay: &[Range<usize>],
    dtype: DType,
) -> anyhow::Result<Arrival> {
    adamw_update_state(state, grad, hyper, skip_decay, None, None)?;
    let master = state.narrow(0, 0, grad.elem_count())?;
    let slice = if master.dtype() == dtype {
        // The view's elements only: `copy` would clone the whole state.
        master.force_contiguous()?
    } else {
        master.to_dtype(dtype)?
    };
    Ok(Arrival::Slice(slice))
}

/// One group on CUDA: wait for its gradient's copy, update (writing the bf16 slice into the
/// pinned buffer in the same pass), start the upload.
#[cfg(feature = "cuda")]
fn pinned_group(
    link: &mut HostLink,
    g: usize,
    downloaded: &limo_ops::cuda::offload::CudaEvent,
    state: &Tensor,
    slice: &Tensor,
    hyper: &AdamWStep,
    skip_decay: &[Range<usize>],
) -> anyhow::Result<Arrival> {
    let (grad, out) = link.staged(g, downloaded)?;
    limo_ops::adamw_update_host(state, grad, hyper, skip_decay, Some(out))?;
    Ok(Arrival::Uploaded(link.upload(g, slice)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Live threads of this process named as the offload thread (Linux: /proc/self/task). No
    /// other test of this crate starts one; rayon's workers, started from it, carry its name.
    fn offload_threads() -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|name| name.trim() == "limo-offload")
            })
            .count()
    }

    #[test]
    fn a_dropped_update_finishes_its_group_and_stops_before_the_drop_returns() -> anyhow::Result<()>
    {
        // A small group 0, then a large group 1 that the thread is updating when the update is
        // dropped, then more: the drop must wait for group 1 to finish (no half-updated group
        // left behind, nothing changing afterwards) and stop the thread before group 2.
        let lens = [1 << 10, 1 << 25, 1 << 10, 1 << 10];
        let state: Vec<Tensor> = lens
            .iter()
            .map(|&n| Tensor::ones(3 * n, DType::F32, &Device::Cpu))
            .collect::<candle_core::Result<_>>()?;
        let grads: Vec<Tensor> = lens
            .iter()
            .map(|&n| Tensor::full(0.5f32, n, &Device::Cpu))
            .collect::<candle_core::Result<_>>()?;
        let hyper = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            t: 1,
            grad_scale: 1.0,
        };
        let dtype = DType::F32;
        let skip = vec![Vec::new(); lens.len()];
        let mut update = start(state.clone(), hyper, skip, Work::Host { grads, dtype });
        update.next()?;
        // The thread is at work on group 1 (threads it starts inherit its name: count the change).
        let working = offload_threads();
        drop(update);
        assert_eq!(
            offload_threads() + 1,
            working,
            "the drop waited for the thread to end"
        );
        // Elements of each group's master weights that the update changed (all start at 1).
        let changed = |g: usize| -> candle_core::Result<usize> {
            let master = state[g].narrow(0, 0, lens[g])?;
            let same = master
                .eq(1f64)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            Ok(lens[g] - same as usize)
        };
        assert_eq!(changed(0)?, lens[0]);
        assert_eq!(
            changed(1)?,
            lens[1],
            "group 1 finished before the drop returned"
        );
        assert_eq!(changed(2)?, 0, "group 2 was never started");
        Ok(())
    }
}
