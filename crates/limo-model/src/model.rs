//! The flat batch layout, dtype names and the inference forward (next-token logits) of the
//! causal LM. The training forward and backward, layer by layer over ZeRO-3 groups, is written
//! once, in limo-train's `ShardedModel` (`limo debug loss-grad` and the golden-parity tests use
//! it at world size 1).

use candle_core::{DType, Tensor};
use limo_ops::{rms_norm_forward, RopeTables, IGNORE_INDEX};

use crate::layer::{layer_forward, LayerContext};
use crate::{Error, ModelWeights, Qwen2Config, Result};

/// Token chunk of the fused head + loss: 1024 x 152k vocabulary is 600 MiB of f32 logits.
pub const DEFAULT_LOSS_CHUNK: usize = 1024;

/// A batch flattened to the token layout of the model: rows (of any lengths) concatenated.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Where each row starts and ends on the flat token axis: `[0, end_0, end_1, ..]`.
    pub row_offsets: Vec<usize>,
    /// `[N]` token ids.
    pub input_ids: Vec<u32>,
    /// `[N]` targets after the causal shift: token t predicts `targets[t]`, which is
    /// `labels[t + 1]` of the same row; [`IGNORE_INDEX`] at the end of every row and of every
    /// packed document.
    pub targets: Vec<i64>,
    /// `[N]` rotary positions.
    pub positions: Vec<u32>,
    /// Document boundaries over the flattened tokens: every row starts a document, and so does
    /// every token whose position restarts at 0 (packed rows).
    pub cu_seqlens: Vec<usize>,
}

impl Batch {
    /// Builds a batch from rows in the Hugging Face convention: `labels` aligned with
    /// `input_ids` (-100 = not a target) and optional `position_ids` restarting at 0 for every
    /// packed document. Rows may differ in length; none may be empty.
    pub fn from_rows(
        input_ids: &[Vec<u32>],
        labels: &[Vec<i64>],
        position_ids: Option<&[Vec<u32>]>,
    ) -> Result<Self> {
        let rows = input_ids.len();
        let bad = |m: String| Err(Error::Config(m));
        if rows == 0 {
            return bad("batch: no rows".into());
        }
        if labels.len() != rows {
            return bad(format!(
                "batch: {rows} rows of input_ids but {} rows of labels",
                labels.len()
            ));
        }
        if let Some(p) = position_ids {
            if p.len() != rows {
                return bad(format!(
                    "batch: {rows} rows of input_ids but {} rows of position_ids",
                    p.len()
                ));
            }
        }
        let mut batch = Batch {
            row_offsets: vec![0],
            input_ids: Vec::new(),
            targets: Vec::new(),
            positions: Vec::new(),
            cu_seqlens: vec![0],
        };
        for r in 0..rows {
            let (ids, lab) = (&input_ids[r], &labels[r]);
            let seq_len = ids.len();
            if seq_len == 0 || lab.len() != seq_len {
                return bad(format!(
                    "batch: row {r} has {} input_ids and {} labels; they must match and not be empty",
                    ids.len(),
                    lab.len()
                ));
            }
            if let Some(&l) = lab.iter().find(|&&l| l < 0 && l != IGNORE_INDEX) {
                return bad(format!(
                    "batch: row {r} has label {l}; labels are token ids or -100"
                ));
            }
            let pos: Vec<u32> = match position_ids {
                Some(p) if p[r].len() != seq_len => {
                    return bad(format!(
                        "batch: row {r} has {} position_ids; expected {seq_len}",
                        p[r].len()
                    ));
                }
                Some(p) => p[r].clone(),
                None => (0..seq_len as u32).collect(),
            };
            let row_start = batch.input_ids.len();
            for (t, &p) in pos.iter().enumerate().skip(1) {
                if p == 0 {
                    batch.cu_seqlens.push(row_start + t);
                }
            }
            batch.cu_seqlens.push(row_start + seq_len);
            batch.input_ids.extend_from_slice(ids);
            // A document's last token cannot see the next document: it has no target there,
            // whatever the next document's first label says.
            let next = lab[1..].iter().zip(&pos[1..]);
            let targets = next.map(|(&l, &p)| if p == 0 { IGNORE_INDEX } else { l });
            batch.targets.extend(targets.chain([IGNORE_INDEX]));
            batch.positions.extend(pos);
            batch.row_offsets.push(batch.input_ids.len());
        }
        Ok(batch)
    }

    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    pub fn rows(&self) -> usize {
        self.row_offsets.len() - 1
    }

    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }

    /// Target count of each document (each `cu_seqlens` window; a token's target belongs to
    /// the document of the token that predicts it).
    pub fn document_targets(&self) -> Vec<usize> {
        self.cu_seqlens
            .windows(2)
            .map(|w| {
                let targets = &self.targets[w[0]..w[1]];
                targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
            })
            .collect()
    }

    /// Documents with at least one target: the examples a step averages over when every
    /// example weighs the same.
    pub fn target_documents(&self) -> usize {
        self.document_targets().iter().filter(|&&n| n > 0).count()
    }

    /// `[N]` loss weights that make every example of a step weigh the same: each target of
    /// a document with `n` targets weighs `1 / (examples x n)`, where `examples` counts the
    /// documents with targets in the whole step (all micro-batches, all ranks); non-targets
    /// weigh 0. The weighted sum of the per-token losses is then the mean over the step's
    /// examples of each example's mean loss.
    pub fn sequence_weights(&self, examples: usize) -> Vec<f64> {
        let mut weights = vec![0.0; self.tokens()];
        for (w, &n) in self.cu_seqlens.windows(2).zip(&self.document_targets()) {
            let weight = 1.0 / (examples as f64 * n as f64);
            let targets = &self.targets[w[0]..w[1]];
            for (weight_t, &target) in weights[w[0]..w[1]].iter_mut().zip(targets) {
                if target != IGNORE_INDEX {
                    *weight_t = weight;
                }
            }
        }
        weights
    }
}

/// A dtype from the names users type.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "f64" | "float64" => Ok(DType::F64),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(Error::Config(format!(
            "unknown dtype {other:?}; expected f32, f64, bf16 or f16"
        ))),
    }
}

/// Logits `[vocab]` of the next token after `ids` (one sequence, positions from 0), forward
/// only: what greedy decoding needs. No cache: each call runs the whole sequence.
pub fn next_token_logits(cfg: &Qwen2Config, w: &ModelWeights, ids: &[u32]) -> Result<Tensor> {
    let device = w.embed.device().clone();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let rope = RopeTables::new(
        &positions,
        cfg.head_dim,
        cfg.rope_theta,
        w.embed.dtype(),
        &device,
    )?;
    let cu_seqlens = [0, ids.len()];
    let ctx = LayerContext {
        config: cfg,
        rope: &rope,
        cu_seqlens: &cu_seqlens,
    };
    let mut x = w
        .embed
        .index_select(&Tensor::from_slice(ids, ids.len(), &device)?, 0)?;
    for layer in &w.layers {
        x = layer_forward(layer, &x, &ctx)?.0;
    }
    let last = x.narrow(0, ids.len() - 1, 1)?;
    let (normed, _) = rms_norm_forward(&last, &w.final_norm, cfg.rms_norm_eps)?;
    Ok(normed.matmul(&w.head().t()?)?.squeeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_weights_give_every_document_the_same_total() {
        // Row 0 packs two documents (positions restart at 0); row 1 is one document; the
        // prompt tokens (-100) are not targets.
        let ids = vec![vec![1, 2, 3, 4, 5, 6, 7], vec![8, 9, 10, 11]];
        let labels = vec![vec![-100, 2, 3, -100, -100, 6, 7], vec![-100, -100, 10, 11]];
        let positions = vec![vec![0, 1, 2, 0, 1, 2, 3], vec![0, 1, 2, 3]];
        let b = Batch::from_rows(&ids, &labels, Some(&positions)).unwrap();
        assert_eq!(b.document_targets(), vec![2, 2, 2]);
        assert_eq!(b.target_documents(), 3);
        // Five examples in the step (two more on other ranks or micro-batches).
        let w = b.sequence_weights(5);
        assert_eq!(w.len(), b.tokens());
        for d in b.cu_seqlens.windows(2) {
            let total: f64 = w[d[0]..d[1]].iter().sum();
            assert!((total - 0.2).abs() < 1e-15, "{d:?}: {total}");
        }
        for (t, &target) in b.targets.iter().enumerate() {
            assert_eq!(w[t] > 0.0, target != IGNORE_INDEX, "token {t}");
        }
        // A document without targets counts for nothing and gets no weight.
        let b = Batch::from_rows(
            &[vec![1, 2], vec![3, 4, 5]],
            &[vec![-100, -100], vec![-100, 4, 5]],
            None,
        )
        .unwrap();
        assert_eq!(b.target_documents(), 1);
        assert_eq!(b.sequence_weights(1), vec![0.0, 0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn no_target_crosses_into_the_next_document() {
        // The second document's first label is a token id, not -100 (a row packed elsewhere):
        // the first document's last token must not learn it.
        let b = Batch::from_rows(
            &[vec![1, 2, 3, 4]],
            &[vec![-100, -100, 3, 4]],
            Some(&[vec![0, 1, 0, 1]]),
        )
        .unwrap();
        assert_eq!(b.targets, vec![IGNORE_INDEX, IGNORE_INDEX, 4, IGNORE_INDEX]);
        assert_eq!(b.target_documents(), 1);
    }
}
