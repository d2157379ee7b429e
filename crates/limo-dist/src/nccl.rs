//! The GPU backend: NCCL through cudarc, one process per GPU. Rank 0 creates the NCCL unique id
//! and hands it to the others over the TCP rendezvous of the CPU backend (`SocketComm`, with its
//! timeouts and its errors naming missing ranks); then every rank joins the NCCL communicator.
//! Collectives run on a communication stream of their own, so an all-gather or a reduce-scatter
//! runs while kernels run on candle's compute stream; events order the two (see `start`), and
//! no host thread waits for either. They take bf16, f16, f32 or f64 tensors.
//!
//! Unlike the CPU backends, NCCL cannot check that ranks agree on lengths and operations (a
//! mismatch hangs or corrupts), and a peer that dies mid-collective leaves the others blocked in
//! NCCL: `limo launch` then stops the whole job, as it does for any rank that dies.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use cudarc::driver::DeviceRepr;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::comm::{Communicator, Started};
use crate::env::DistEnv;
use crate::socket::SocketComm;

/// One rank of an NCCL communicator over the GPU of `device`.
pub struct NcclComm {
    /// Bound to the communication stream.
    comm: Comm,
    /// candle's device: its stream is the compute stream.
    device: CudaDevice,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent (NCCL's rule); `NcclComm` is owned by one rank and the trait's methods take it
// through `&self` from that rank's thread, so moving it between threads is sound.
unsafe impl Send for NcclComm {}

/// Joins the NCCL communicator of the job `env` describes, on the GPU of `device` (a CUDA
/// device: the one for `env.gpu()`). The unique id travels over a TCP rendezvous at
/// `env.master_addr:env.master_port` whose waits give up after `timeout`.
pub fn connect_nccl(
    env: &DistEnv,
    device: &Device,
    timeout: Duration,
) -> anyhow::Result<Box<dyn Communicator>> {
    let cuda = device
        .as_cuda_device()
        .context("the NCCL backend needs a CUDA device")?
        .clone();
    let id = if env.world_size == 1 {
        Id::new().map_err(|e| anyhow!("NCCL unique id: {e:?}"))?
    } else {
        let rendezvous = SocketComm::connect(env, timeout)?;
        share_id(&rendezvous)?
    };
    // The ordering between the two streams is explicit (events in `start`): cudarc's automatic
    // tracking would add an event wait and record to every kernel argument of every launch
    // once a second stream exists. candle itself uses one stream and never relied on it.
    let ctx = cuda.cuda_stream().context().clone();
    // SAFETY: every buffer shared between the streams is ordered by the events of `start`.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx
        .new_stream()
        .map_err(|e| anyhow!("rank {}: creating the NCCL stream: {e:?}", env.rank))?;
    let comm = Comm::from_rank(stream, env.rank, env.world_size, id)
        .map_err(|e| anyhow!("rank {}: NCCL communicator init: {e:?}", env.rank))?;
    Ok(Box::new(NcclComm { comm, device: cuda }))
}

/// Rank 0's fresh NCCL id on every rank, broadcast over `rendezvous` (each byte of the id as
/// one value: exact, and it reuses the backend's checks and error messages).
fn share_id(rendezvous: &SocketComm) -> anyhow::Result<Id> {
    let mine: Vec<f64> = if rendezvous.rank() == 0 {
        let id = Id::new().map_err(|e| anyhow!("NCCL unique id: {e:?}"))?;
        id.internal().iter().map(|&b| b as f64).collect()
    } else {
        vec![0.0; 128]
    };
    let shared = rendezvous
        .broadcast(&Tensor::new(mine, &Device::Cpu)?, 0)?
        .to_vec1::<f64>()?;
    let mut internal = [0 as std::ffi::c_char; 128];
    if shared.len() != internal.len() {
        bail!("rank 0 sent an NCCL id of {} bytes", shared.len());
    }
    for (dst, src) in internal.iter_mut().zip(shared) {
        *dst = src as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

#[derive(Clone, Copy)]
enum Kind {
    AllGather,
    ReduceScatter,
    AllReduce,
    Broadcast(usize),
}

impl NcclComm {
    /// Enqueues the collective on the communication stream after everything enqueued so far on
    /// the compute stream (which wrote `input`), and returns its output with a fence that makes
    /// the compute stream wait for it. The output is allocated on the compute stream before the
    /// collective (so its memory is ordered like any other buffer of that stream), and `input`
    /// is kept alive until the fence: freed earlier, the compute stream could reuse its memory
    /// while NCCL still reads it.
    fn start(&self, kind: Kind, input: &Tensor) -> anyhow::Result<Started> {
        match input.dtype() {
            DType::F32 => self.start_typed::<f32>(kind, input),
            DType::BF16 => self.start_typed::<half::bf16>(kind, input),
            DType::F16 => self.start_typed::<half::f16>(kind, input),
            DType::F64 => self.start_typed::<f64>(kind, input),
            other => bail!("NCCL collectives take f32, bf16, f16 or f64, not {other:?}"),
        }
    }

    fn start_typed<T>(&self, kind: Kind, input: &Tensor) -> anyhow::Result<Started>
    where
        T: CudaDType + NcclType + DeviceRepr,
    {
        let world = self.comm.world_size();
        let input = input.flatten_all()?.contiguous()?;
        let n = input.elem_count();
        let out_len = match kind {
            Kind::AllGather => n * world,
            Kind::ReduceScatter => {
                if !n.is_multiple_of(world) {
                    bail!("reduce_scatter: {n} values do not split over {world} ranks");
                }
                n / world
            }
            Kind::AllReduce | Kind::Broadcast(_) => n,
        };
        if let Kind::Broadcast(root) = kind {
            if root >= world {
                bail!("broadcast: no rank {root} in a group of {world}");
            }
        }
        let (storage, layout) = input.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            bail!(
                "NCCL collectives take CUDA tensors, got one on {:?}",
                input.device()
            );
        };
        let start = layout.start_offset();
        let src = storage.as_cuda_slice::<T>()?.slice(start..start + n);
        // SAFETY: every element is written by the collective before the tensor is read (the
        // fence below orders every read after it).
        let mut dst = unsafe { self.device.alloc::<T>(out_len)? };
        let compute = self.device.cuda_stream();
        let comm_stream = self.comm.stream();
        let nccl_err = |e| anyhow!("rank {}: NCCL stream: {e:?}", self.comm.rank());
        comm_stream
            .wait(&compute.record_event(None).map_err(nccl_err)?)
            .map_err(nccl_err)?;
        let status = match kind {
            Kind::AllGather => self.comm.all_gather(&src, &mut dst),
            Kind::ReduceScatter => self.comm.reduce_scatter(&src, &mut dst, &ReduceOp::Sum),
            Kind::AllReduce => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Kind::Broadcast(root) => self.comm.broadcast(Some(&src), &mut dst, root as i32),
        };
        status.map_err(|e| anyhow!("rank {}: NCCL: {e:?}", self.comm.rank()))?;
        let done = comm_stream.record_event(None).map_err(nccl_err)?;
        let storage = CudaStorage::wrap_cuda_slice(dst, self.device.clone());
        let out = Tensor::from_storage(Storage::Cuda(storage), out_len, BackpropOp::none(), false);
        let (keep, rank) = (input.clone(), self.comm.rank());
        Ok(Started::fenced(
            out,
            Box::new(move || {
                compute
                    .wait(&done)
                    .map_err(|e| anyhow!("rank {rank}: waiting for NCCL: {e:?}"))?;
                drop(keep);
                Ok(())
            }),
        ))
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        self.start(Kind::Broadcast(root), input)?.finish()
    }

    fn start_all_gather(&self, input: &Tensor) -> anyhow::Result<Started> {
        self.start(Kind::AllGather, input)
    }

    fn start_reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Started> {
        self.start(Kind::ReduceScatter, input)
    }

    fn start_all_reduce(&self, input: &Tensor) -> anyhow::Result<Started> {
        self.start(Kind::AllReduce, input)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        // NCCL has no barrier: a one-element all-reduce, waited for, is one.
        let one = Tensor::ones(1, DType::F32, &Device::Cuda(self.device.clone()))?;
        self.all_reduce(&one)?.to_vec1::<f32>()?;
        Ok(())
    }
}
