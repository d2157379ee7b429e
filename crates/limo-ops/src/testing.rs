//! Test helpers: random tensors, relative errors and candle autograd as the oracle.

use candle_core::{Device, Result, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A deterministic f64 tensor with entries uniform in [-1, 1).
pub fn rand_tensor(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, dev)
}

pub use crate::rel_l2;

pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let err = rel_l2(a, b)?;
    assert!(err <= tol, "{what}: relative L2 error {err:e} > {tol:e}");
    Ok(())
}

/// Runs `f` on fresh variables made from `inputs`, back-propagates `sum(f(..) * dy)` with
/// candle's autograd and returns the gradients of the inputs and the output.
pub fn autograd<F>(inputs: &[&Tensor], dy: &Tensor, f: F) -> Result<(Vec<Tensor>, Tensor)>
where
    F: Fn(&[Var]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t))
        .collect::<Result<_>>()?;
    let y = f(&vars)?;
    let objective = (&y * dy)?.sum_all()?;
    let store = objective.backward()?;
    let grads = vars
        .iter()
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<Result<_>>()?;
    Ok((grads, y))
}
