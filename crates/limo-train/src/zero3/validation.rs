//! The forward alone, for the validation loss of held-out rows (`data.val_size`).

use candle_core::Tensor;
use limo_model::layer::{layer_forward, LayerContext};
use limo_model::Batch;
use limo_ops::{linear_cross_entropy_scaled_on_device, rms_norm_forward};

use super::{ShardedModel, EMBED_GROUP};

impl ShardedModel {
    /// The loss sum of `batch` (its targets' cross-entropy, a `[1]` f64 tensor on the device),
    /// forward only, each group gathered as the training forward gathers it: validation. Every
    /// rank must call it the same number of times.
    pub fn loss_sum(&self, batch: &Batch, loss_chunk: usize) -> anyhow::Result<Tensor> {
        let cfg = &self.cfg;
        let layers = cfg.num_hidden_layers;
        let ids = Tensor::from_slice(&batch.input_ids, batch.tokens(), &self.device)?;
        let rope = self.rope.tables(&batch.positions)?;
        let ctx = LayerContext {
            config: cfg,
            rope: &rope,
            cu_seqlens: &batch.cu_seqlens,
        };
        let mut next = self.start_gather(1)?;
        let embed = self.gather(EMBED_GROUP)?.remove(0);
        let mut x = embed.index_select(&ids, 0)?;
        let tied_head = cfg.tie_word_embeddings.then_some(embed);
        for i in 0..layers {
            let w = self.layer_weights(i, self.wait(next))?;
            next = self.start_gather(i + 2)?;
            x = layer_forward(&w, &x, &ctx)?.0;
        }
        let mut head_params = self.unflatten(layers + 1, self.wait(next))?;
        let final_norm = head_params.remove(0);
        let head_weight = match tied_head {
            Some(embed) => embed,
            None => head_params.remove(0),
        };
        let (normed, _) = rms_norm_forward(&x, &final_norm, cfg.rms_norm_eps)?;
        let head = linear_cross_entropy_scaled_on_device(
            &normed,
            &head_weight,
            &batch.targets,
            None,
            loss_chunk,
        )?;
        Ok(head.loss_sum)
    }
}
