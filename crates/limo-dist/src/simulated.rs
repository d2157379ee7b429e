//! One process playing rank `rank` of a `world`-way job, for benchmarks: `limo bench step
//! --simulate-world W` measures on one GPU the memory and compute of one rank of the 32B recipe.
//! Every collective returns a tensor of the size the real one would, built from local data (the
//! values are meaningless; the bytes and the copies are the real rank's).

use anyhow::bail;
use candle_core::Tensor;

use crate::comm::Communicator;

pub struct SimulatedComm {
    rank: usize,
    world: usize,
}

impl SimulatedComm {
    pub fn new(world: usize, rank: usize) -> anyhow::Result<Self> {
        if world == 0 || rank >= world {
            bail!("--rank {rank} is not a rank of a {world}-way job");
        }
        Ok(Self { rank, world })
    }
}

impl Communicator for SimulatedComm {
    crate::rank_world_fields!();

    /// `world` copies of this rank's slice: the gathered buffer has the real size.
    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let copies = vec![input.flatten_all()?; self.world];
        Ok(Tensor::cat(&copies, 0)?)
    }

    /// This rank's chunk of its own input (a copy, as NCCL writes a new buffer).
    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        let n = input.elem_count();
        if !n.is_multiple_of(self.world) {
            bail!(
                "reduce_scatter: {n} values do not split over {} ranks",
                self.world
            );
        }
        let chunk = n / self.world;
        // `force_contiguous`, not `copy`: a copy of a narrowed view clones the whole input, so
        // the simulated rank would hold every rank's slice.
        Ok(input
            .flatten_all()?
            .narrow(0, self.rank * chunk, chunk)?
            .force_contiguous()?)
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        Ok(input.copy()?)
    }

    fn broadcast(&self, input: &Tensor, _root: usize) -> anyhow::Result<Tensor> {
        Ok(input.copy()?)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn collectives_have_the_real_sizes() -> anyhow::Result<()> {
        let c = SimulatedComm::new(4, 2)?;
        let slice = Tensor::arange(0f32, 3.0, &Device::Cpu)?;
        assert_eq!(c.all_gather(&slice)?.dims(), &[12]);
        let full = Tensor::arange(0f32, 8.0, &Device::Cpu)?;
        assert_eq!(c.reduce_scatter(&full)?.to_vec1::<f32>()?, vec![4.0, 5.0]);
        assert!(c
            .reduce_scatter(&Tensor::zeros(7, DType::F32, &Device::Cpu)?)
            .is_err());
        assert_eq!(c.all_reduce(&slice)?.dims(), &[3]);
        assert!(SimulatedComm::new(4, 4).is_err());
        Ok(())
    }

    #[test]
    fn a_scattered_slice_holds_only_its_own_values() -> anyhow::Result<()> {
        // The simulated rank's memory is what the benchmark measures: its slice must not keep
        // the whole input alive (a copy of a narrowed view would).
        let c = SimulatedComm::new(4, 1)?;
        let mine = c.reduce_scatter(&Tensor::arange(0f32, 8.0, &Device::Cpu)?)?;
        let (storage, _) = mine.storage_and_layout();
        let held = match &*storage {
            candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>()?.len(),
            _ => unreachable!("a CPU tensor"),
        };
        assert_eq!(held, 2);
        Ok(())
    }
}
