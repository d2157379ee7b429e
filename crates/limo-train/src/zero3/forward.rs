//! The model's forward through ZeRO-3's gathers, written once: the training step keeps what
//! its backward needs of each layer, validation (`data.val_size`) keeps nothing.

use candle_core::Tensor;
use limo_model::layer::{layer_forward, LayerActivations, LayerContext};
use limo_model::Batch;
use limo_ops::{linear_cross_entropy_scaled_on_device, rms_norm_forward};

use super::{ShardedModel, EMBED_GROUP};
use crate::comm_thread::Pending;
use limo_dist::comm::Started;

/// What the forward leaves for the head: the last layer's output, the embedding when the head
/// is tied to it (kept rather than gathered twice), and the head group's all-gather, in flight.
pub(super) struct Trunk {
    pub x: Tensor,
    pub tied_head: Option<Tensor>,
    pub head_gather: Pending<Started>,
}

impl ShardedModel {
    /// The embedding and every decoder layer. Group g + 1's all-gather is always in flight
    /// while group g computes. `keep` receives each layer's input and activations.
    pub(super) fn forward_layers(
        &self,
        ids: &Tensor,
        ctx: &LayerContext,
        mut keep: impl FnMut(Tensor, LayerActivations),
    ) -> anyhow::Result<Trunk> {
        let mut next = self.start_gather(1)?;
        let embed = self.gather(EMBED_GROUP)?.remove(0);
        let mut x = embed.index_select(ids, 0)?;
        let tied_head = self.cfg.tie_word_embeddings.then_some(embed);
        for i in 0..self.cfg.num_hidden_layers {
            let w = self.layer_weights(i, self.wait(next))?;
            next = self.start_gather(i + 2)?;
            let (y, activations) = layer_forward(&w, &x, ctx)?;
            keep(x, activations);
            x = y;
        }
        Ok(Trunk {
            x,
            tied_head,
            head_gather: next,
        })
    }

    /// The final norm's weight and the head's, from the head group's all-gather.
    pub(super) fn head_weights(
        &self,
        head_gather: Pending<Started>,
        tied_head: Option<Tensor>,
    ) -> anyhow::Result<(Tensor, Tensor)> {
        let head_group = self.cfg.num_hidden_layers + 1;
        let mut params = self.unflatten(head_group, self.wait(head_gather))?;
        let final_norm = params.remove(0);
        let head = match tied_head {
            Some(embed) => embed,
            None => params.remove(0),
        };
        Ok((final_norm, head))
    }

    /// The loss sum of `batch` (its targets' cross-entropy, a `[1]` f64 tensor on the device),
    /// forward only, each group gathered as the training forward gathers it: validation. Every
    /// rank must call it the same number of times.
    pub fn loss_sum(&self, batch: &Batch, loss_chunk: usize) -> anyhow::Result<Tensor> {
        let ids = Tensor::from_slice(&batch.input_ids, batch.tokens(), &self.device)?;
        let rope = self.rope.tables(&batch.positions)?;
        let ctx = LayerContext {
            config: &self.cfg,
            rope: &rope,
            cu_seqlens: &batch.cu_seqlens,
        };
        let trunk = self.forward_layers(&ids, &ctx, |_, _| {})?;
        let (final_norm, head) = self.head_weights(trunk.head_gather, trunk.tied_head)?;
        let (normed, _) = rms_norm_forward(&trunk.x, &final_norm, self.cfg.rms_norm_eps)?;
        let loss = linear_cross_entropy_scaled_on_device(
            &normed,
            &head,
            &batch.targets,
            None,
            loss_chunk,
        )?;
        Ok(loss.loss_sum)
    }
}
