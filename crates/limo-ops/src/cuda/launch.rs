//! What the wrappers share around a launch: read access to their input tensors, and the
//! dispatch from a tensor's dtype to the kernel instantiation.

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{Layout, Result, StorageRef, Tensor};

/// A tensor's storage, read-locked for as long as the kernel arguments borrow it, with its
/// layout.
pub(crate) struct Input<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Input<'a> {
    pub(crate) fn of(t: &'a Tensor) -> Self {
        let (storage, layout) = t.storage_and_layout();
        Self { storage, layout }
    }

    /// The elements as a kernel argument (see [`super::view`]: contiguous tensors only).
    pub(crate) fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        super::view(&self.storage, self.layout)
    }
}

/// [`Input::of`] every tensor, for `let [a, b] = inputs([&a, &b]);`.
pub(crate) fn inputs<'a, const N: usize>(tensors: [&'a Tensor; N]) -> [Input<'a>; N] {
    tensors.map(Input::of)
}

/// `by_dtype!(dtype, "what", f(args..))`: `f::<bf16>(args..)` or `f::<f32>(args..)` for the
/// dtypes the kernels are instantiated for, else the error "what: unsupported dtype ..".
macro_rules! by_dtype {
    ($dtype:expr, $what:literal, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            candle_core::DType::BF16 => $f::<half::bf16>($($arg),*),
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            other => candle_core::bail!(concat!($what, ": unsupported dtype {:?}"), other),
        }
    };
}
pub(crate) use by_dtype;
