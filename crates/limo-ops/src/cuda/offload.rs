//! The PCIe side of optimizer offload (`train.optimizer_offload = "cpu"`): per ZeRO-3 group a
//! pinned fp32 staging buffer for the gradient slice going down and a pinned bf16 buffer for the
//! updated compute slice going up, both copied on a stream of their own, so the copies run beside
//! the compute stream and the host optimizer reads and writes DMA-able memory directly (a
//! pageable copy goes through a driver bounce buffer and blocks the calling thread).
//!
//! Ordering is explicit (the device runs with cudarc's event tracking off, see `pool.rs`):
//! [`HostLink::download`] starts after everything queued on the compute stream so far (the
//! backward, and the fences of every collective that read the compute slices) and returns one
//! event per group; [`HostLink::upload`] returns the event that the compute stream must wait for
//! before the group's next all-gather ([`HostLink::before_compute`]).

use std::sync::Arc;

pub use candle_core::cuda_backend::cudarc::driver::CudaEvent;
use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaStream, DevicePtr, PinnedHostSlice,
};
use candle_core::{bail, Device, Result, Tensor, WithDType};
use half::bf16;

use super::launch::Input;
use super::{wrap, KernelType};

/// Staging buffers and the copy stream of one rank.
pub struct HostLink {
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    /// fp32 gradients, in cached pinned memory: the host reads them.
    down: Vec<PinnedHostSlice<f32>>,
    /// bf16 compute slices, write-combined: the host only writes them, the DMA engine reads.
    up: Vec<PinnedHostSlice<bf16>>,
}

// SAFETY: the pinned buffers and streams are Send; a `HostLink` is used by one thread at a time
// (moved to the optimizer thread for a step and back).
unsafe impl Send for HostLink {}

impl HostLink {
    /// Buffers for groups of `lens` elements on the GPU of `device`, with a new copy stream.
    pub fn new(device: &Device, lens: &[usize]) -> Result<Self> {
        let compute = device.as_cuda_device()?.cuda_stream();
        let ctx = compute.context().clone();
        let copy = ctx.new_stream().map_err(wrap)?;
        let mut down = Vec::with_capacity(lens.len());
        let mut up = Vec::with_capacity(lens.len());
        // Not the device's memory: say so, so that a failure here is not read as a device OOM.
        let pinned = |e| {
            let gib = pinned_bytes(lens) as f64 / (1u64 << 30) as f64;
            wrap(format!(
                "allocating {gib:.1} GiB of pinned host memory for the optimizer offload: {e:?}"
            ))
        };
        for &n in lens {
            // SAFETY: pinned allocations; every element is written by a copy or the optimizer
            // before it is read.
            unsafe {
                down.push(ctx.alloc_pinned_with_flags::<f32>(n, 0).map_err(pinned)?);
                up.push(ctx.alloc_pinned::<bf16>(n).map_err(pinned)?);
            }
        }
        Ok(Self {
            compute,
            copy,
            down,
            up,
        })
    }

    /// Starts copying each group's fp32 gradient slice into its staging buffer, after all work
    /// queued on the compute stream so far; one event per group marks its copy done. The
    /// caller keeps `grads` alive until the events complete.
    pub fn download(&mut self, grads: &[Tensor]) -> Result<Vec<CudaEvent>> {
        if grads.len() != self.down.len() {
            bail!(
                "offload: {} gradients for {} groups",
                grads.len(),
                self.down.len()
            );
        }
        let after_backward = self.compute.record_event(None).map_err(wrap)?;
        self.copy.wait(&after_backward).map_err(wrap)?;
        let mut events = Vec::with_capacity(grads.len());
        for (g, (grad, dst)) in grads.iter().zip(&mut self.down).enumerate() {
            let len = dst.len();
            let what = format_args!("gradient of group {g}");
            with_device_ptr::<f32>(grad, len, what, &self.copy, |ptr| {
                // SAFETY: `dst` is pinned and holds exactly the view's elements; the host does
                // not touch it until the event below completes.
                unsafe {
                    let host = std::slice::from_raw_parts_mut(dst.as_mut_ptr().map_err(wrap)?, len);
                    result::memcpy_dtoh_async(host, ptr, self.copy.cu_stream()).map_err(wrap)
                }
            })?;
            // Blocking: the optimizer thread sleeps on it instead of spinning a core that the
            // host update needs.
            events.push(
                self.copy
                    .record_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                    .map_err(wrap)?,
            );
        }
        Ok(events)
    }

    /// Group `g`'s staged gradient and its bf16 output buffer, once `done` (its download event)
    /// has completed: this thread waits for it.
    pub fn staged(&mut self, g: usize, done: &CudaEvent) -> Result<(&[f32], &mut [bf16])> {
        done.synchronize().map_err(wrap)?;
        let (down, up) = (&self.down[g], &mut self.up[g]);
        // SAFETY: the download has completed (above) and the previous upload from `up` was
        // waited for by the compute stream before the backward whose end the download followed.
        unsafe {
            Ok((
                std::slice::from_raw_parts(down.as_ptr().map_err(wrap)?, down.len()),
                std::slice::from_raw_parts_mut(up.as_mut_ptr().map_err(wrap)?, up.len()),
            ))
        }
    }

    /// Starts copying group `g`'s bf16 buffer into `slice` (the group's compute slice on the
    /// GPU, written in place); the returned event marks it done.
    pub fn upload(&self, g: usize, slice: &Tensor) -> Result<CudaEvent> {
        // The optimizer thread calls this: the context must be current on it.
        self.bind()?;
        let src = &self.up[g];
        let what = format_args!("compute slice of group {g}");
        with_device_ptr::<bf16>(slice, src.len(), what, &self.copy, |ptr| {
            // SAFETY: the slice was last read by the all-gathers of the previous step, which the
            // download's wait on the compute stream ordered before this copy stream's work.
            unsafe {
                let host = std::slice::from_raw_parts(src.as_ptr().map_err(wrap)?, src.len());
                result::memcpy_htod_async(ptr, host, self.copy.cu_stream()).map_err(wrap)
            }
        })?;
        self.copy.record_event(None).map_err(wrap)
    }

    /// Makes the context current on the calling thread (the optimizer thread, before it frees
    /// any GPU memory).
    pub fn bind(&self) -> Result<()> {
        self.copy.context().bind_to_thread().map_err(wrap)
    }

    /// Waits for every copy queued on the copy stream: uploads nobody waited for (an update
    /// dropped mid-flight) must end before the slices they write can be freed.
    pub fn drain(&self) -> Result<()> {
        self.bind()?;
        self.copy.synchronize().map_err(wrap)
    }

    /// Makes the compute stream wait (on the GPU) for an upload's event.
    pub fn before_compute(compute: &Device, uploaded: &CudaEvent) -> Result<()> {
        let stream = compute.as_cuda_device()?.cuda_stream();
        stream.wait(uploaded).map_err(wrap)
    }
}

/// Runs `copy` with the device address of `t`'s elements on `stream`, once they are checked to
/// be `len` values of `T` (`what` names `t` in the error); `t`'s storage stays locked meanwhile.
fn with_device_ptr<T: KernelType + WithDType>(
    t: &Tensor,
    len: usize,
    what: std::fmt::Arguments<'_>,
    stream: &Arc<CudaStream>,
    copy: impl FnOnce(sys::CUdeviceptr) -> Result<()>,
) -> Result<()> {
    if t.dtype() != T::DTYPE || t.elem_count() != len {
        bail!("offload: {what} must be {len} {} values", T::SUFFIX);
    }
    let input = Input::of(t);
    let view = input.view::<T>()?;
    let (ptr, _sync) = view.device_ptr(stream);
    copy(ptr)
}

/// Pinned bytes one rank's [`HostLink`] holds for groups of `lens` elements (6 B per element).
pub fn pinned_bytes(lens: &[usize]) -> usize {
    lens.iter().sum::<usize>() * (std::mem::size_of::<f32>() + std::mem::size_of::<bf16>())
}
