//! The GPU backend: NCCL through cudarc, one process per GPU. Rank 0 creates the NCCL unique id
//! and hands it to the others over the TCP rendezvous of the CPU backend (`SocketComm`, with its
//! timeouts and its errors naming missing ranks); then every rank joins the NCCL communicator.
//! Collectives run on candle's CUDA stream, so they are ordered with the kernels around them
//! without extra synchronisation, and take bf16, f16, f32 or f64 tensors.
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

use crate::comm::Communicator;
use crate::env::DistEnv;
use crate::socket::SocketComm;

/// One rank of an NCCL communicator over the GPU of `device`.
pub struct NcclComm {
    comm: Comm,
    device: CudaDevice,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent (NCCL's rule); `NcclComm` is owned by one rank and the trait's methods take it
// through `&self` from that rank's thread, so moving it between threads is sound.
unsafe impl Send for NcclComm {}

/// Joins the NCCL communicator of the job `env` describes, on the GPU of `device` (a CUDA
/// device: the one for `env.local_rank`). The unique id travels over a TCP rendezvous at
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
    let comm = Comm::from_rank(cuda.cuda_stream(), env.rank, env.world_size, id)
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
    fn run(&self, kind: Kind, input: &Tensor) -> anyhow::Result<Tensor> {
        match input.dtype() {
            DType::F32 => self.run_typed::<f32>(kind, input),
            DType::BF16 => self.run_typed::<half::bf16>(kind, input),
            DType::F16 => self.run_typed::<half::f16>(kind, input),
            DType::F64 => self.run_typed::<f64>(kind, input),
            other => bail!("NCCL collectives take f32, bf16, f16 or f64, not {other:?}"),
        }
    }

    fn run_typed<T>(&self, kind: Kind, input: &Tensor) -> anyhow::Result<Tensor>
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
        // SAFETY: every element is written by the collective before the tensor is read; the
        // allocation and the collective are on the same stream, in that order.
        let mut dst = unsafe { self.device.alloc::<T>(out_len)? };
        let status = match kind {
            Kind::AllGather => self.comm.all_gather(&src, &mut dst),
            Kind::ReduceScatter => self.comm.reduce_scatter(&src, &mut dst, &ReduceOp::Sum),
            Kind::AllReduce => self.comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Kind::Broadcast(root) => self.comm.broadcast(Some(&src), &mut dst, root as i32),
        };
        status.map_err(|e| anyhow!("rank {}: NCCL: {e:?}", self.comm.rank()))?;
        let storage = CudaStorage::wrap_cuda_slice(dst, self.device.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            out_len,
            BackpropOp::none(),
            false,
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

    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.run(Kind::AllGather, input)
    }

    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.run(Kind::ReduceScatter, input)
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.run(Kind::AllReduce, input)
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        self.run(Kind::Broadcast(root), input)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        // NCCL has no barrier: a one-element all-reduce, waited for, is one.
        let one = Tensor::ones(1, DType::F32, &Device::Cuda(self.device.clone()))?;
        self.all_reduce(&one)?.to_vec1::<f32>()?;
        Ok(())
    }
}
