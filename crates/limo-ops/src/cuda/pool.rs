//! The CUDA memory pool candle allocates from, and its statistics.
//!
//! How candle allocates (candle-core 0.11.1, cudarc 0.19): every buffer comes from
//! `CudaDevice::alloc`/`alloc_zeros`, i.e. `CudaStream::alloc` on candle's stream. cudarc calls
//! `cuMemAllocAsync` there when the context's `has_async_alloc()` is true (the device reports
//! `CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`, every GPU limo's kernels run on), and drops a
//! `CudaSlice` with `cuMemFreeAsync`; otherwise plain `cuMemAlloc`/`cuMemFree`. The async calls
//! use the device's *current* memory pool, which is its default pool unless someone called
//! `cuDeviceSetMemPool` (limo never does). That pool's release threshold is 0 by default: at
//! every synchronization (each `to_scalar`, each host copy) the driver returns all freed memory
//! to the OS, and the next step pays `cudaMalloc` again for every activation buffer.
//! [`keep_freed_memory`] raises the threshold to `u64::MAX`, so freed memory stays in the pool
//! for reuse (PyTorch's caching allocator behaves the same way).
//!
//! On the `cuMemAlloc` path (no pool support) there is nothing to tune:
//! [`keep_freed_memory`] is a no-op and [`memory_stats`] reports only the driver's free/total.

use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};
use candle_core::{Device, Result};

use super::wrap;

/// Memory of one GPU, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Whether candle allocates from a stream-ordered pool (the `pool_*` fields are 0 if not).
    pub pooled: bool,
    /// `CU_MEMPOOL_ATTR_USED_MEM_HIGH`: most memory handed out to tensors at once since the
    /// last [`reset_peak`] (the activation + state peak of a step).
    pub used_high: u64,
    /// `CU_MEMPOOL_ATTR_USED_MEM_CURRENT`: memory handed out to live tensors now.
    pub used_current: u64,
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH`: most memory the pool held from the driver at once
    /// since the last [`reset_peak`] (used + cached free blocks + fragmentation).
    pub reserved_high: u64,
    /// `CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`: memory the pool holds from the driver now.
    pub reserved_current: u64,
    /// `cuMemGetInfo`: free memory of the device (all processes, all allocators).
    pub free: u64,
    /// `cuMemGetInfo`: total memory of the device.
    pub total: u64,
}

/// The context of a CUDA `device`, bound to the calling thread.
fn context(device: &Device) -> Result<std::sync::Arc<CudaContext>> {
    let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
    ctx.bind_to_thread().map_err(wrap)?;
    Ok(ctx)
}

/// The pool `cuMemAllocAsync` takes candle's buffers from, `None` on the `cuMemAlloc` path.
fn current_pool(ctx: &CudaContext) -> Result<Option<sys::CUmemoryPool>> {
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    // SAFETY: the device handle comes from a live context.
    let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }.map_err(wrap)?;
    Ok(Some(pool))
}

fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: a valid pool; every attribute read here is a cuuint64_t.
    unsafe { result::mem_pool::get_attribute(pool, attr, &mut value as *mut u64 as *mut c_void) }
        .map_err(wrap)?;
    Ok(value)
}

fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, mut value: u64) -> Result<()> {
    // SAFETY: a valid pool; every attribute written here is a cuuint64_t.
    unsafe { result::mem_pool::set_attribute(pool, attr, &mut value as *mut u64 as *mut c_void) }
        .map_err(wrap)
}

/// GPU `ordinal` as limo computes on it: candle's device on a stream of its own (not the
/// per-thread default stream, whose identity depends on the calling thread, so events recorded
/// on it from one thread and waited for from another would name different streams), with
/// cudarc's automatic per-buffer event tracking off (limo orders its streams with explicit
/// events: the NCCL stream in limo-dist, the copy streams of offloading) and freed memory kept
/// in the pool ([`keep_freed_memory`]).
pub fn open_device(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda_with_stream(ordinal)?;
    // SAFETY: every buffer shared between streams is ordered by explicit events.
    unsafe { device.as_cuda_device()?.disable_event_tracking() };
    keep_freed_memory(&device)?;
    Ok(device)
}

/// Keeps memory freed by candle in the device's pool instead of returning it to the OS at each
/// synchronization (release threshold `u64::MAX`). Call it right after opening the device. A
/// no-op for a non-CUDA device and for a GPU without memory pools (candle then uses
/// `cuMemAlloc`, which caches nothing).
pub fn keep_freed_memory(device: &Device) -> Result<()> {
    if !device.is_cuda() {
        return Ok(());
    }
    let ctx = context(device)?;
    if let Some(pool) = current_pool(&ctx)? {
        set(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        )?;
    }
    Ok(())
}

/// The pool's release threshold in bytes (`u64::MAX` after [`keep_freed_memory`]), `None`
/// without a pool.
pub fn release_threshold(device: &Device) -> Result<Option<u64>> {
    let ctx = context(device)?;
    current_pool(&ctx)?
        .map(|pool| {
            get(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            )
        })
        .transpose()
}

/// The memory statistics of a CUDA `device`, after synchronizing candle's stream (so frees
/// queued on it have happened). An error for any other device.
pub fn memory_stats(device: &Device) -> Result<MemStats> {
    let ctx = context(device)?;
    device.synchronize()?;
    let (free, total) = ctx.mem_get_info().map_err(wrap)?;
    let mut stats = MemStats {
        free: free as u64,
        total: total as u64,
        ..MemStats::default()
    };
    if let Some(pool) = current_pool(&ctx)? {
        use sys::CUmemPool_attribute::*;
        stats.pooled = true;
        stats.used_high = get(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        stats.used_current = get(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        stats.reserved_high = get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
        stats.reserved_current = get(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
    }
    Ok(stats)
}

/// Resets the pool's high-water marks (`USED_MEM_HIGH`, `RESERVED_MEM_HIGH`) to the current
/// usage: CUDA's reset is writing 0 to them. Synchronizes candle's stream first. A no-op
/// without a pool; an error for a non-CUDA device.
pub fn reset_peak(device: &Device) -> Result<()> {
    let ctx = context(device)?;
    device.synchronize()?;
    if let Some(pool) = current_pool(&ctx)? {
        use sys::CUmemPool_attribute::*;
        set(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        set(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
    }
    Ok(())
}
