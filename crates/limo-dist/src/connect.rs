//! Choosing the CPU communicator for a run: `SoloComm` for one process, `SocketComm` otherwise.

use std::time::Duration;

use anyhow::bail;
use candle_core::Tensor;

use crate::comm::Communicator;
use crate::env::DistEnv;
use crate::socket::SocketComm;

/// The CPU communicator of this process: `SoloComm` when the world has one rank (no socket is
/// opened), otherwise a `SocketComm` through rank 0 at `env.master_addr:env.master_port`.
/// Every rendezvous and collective wait gives up after `timeout`, naming the missing ranks.
pub fn connect(env: &DistEnv, timeout: Duration) -> anyhow::Result<Box<dyn Communicator>> {
    if env.world_size == 1 {
        return Ok(Box::new(SoloComm));
    }
    Ok(Box::new(SocketComm::connect(env, timeout)?))
}

/// The only rank of a world of one: every collective returns its input, flattened to 1-D (the
/// shape every backend returns).
#[derive(Clone, Copy, Debug, Default)]
pub struct SoloComm;

impl Communicator for SoloComm {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        Ok(input.flatten_all()?)
    }

    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        Ok(input.flatten_all()?)
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        Ok(input.flatten_all()?)
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        if root != 0 {
            bail!("broadcast: no rank {root} in a world of 1");
        }
        Ok(input.flatten_all()?)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn solo_collectives_are_the_identity() {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let c = connect(
            &DistEnv {
                rank: 0,
                world_size: 1,
                local_rank: 0,
                local_world_size: 1,
                master_addr: "127.0.0.1".into(),
                master_port: 1,
            },
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!((c.rank(), c.world_size()), (0, 1));
        let expect: Vec<f32> = (0..6).map(|i| i as f32).collect();
        for out in [
            c.all_gather(&t).unwrap(),
            c.reduce_scatter(&t).unwrap(),
            c.all_reduce(&t).unwrap(),
            c.broadcast(&t, 0).unwrap(),
        ] {
            assert_eq!(out.dtype(), DType::F32);
            assert_eq!(out.to_vec1::<f32>().unwrap(), expect);
        }
        assert!(c.broadcast(&t, 1).is_err());
        c.barrier().unwrap();
    }
}
