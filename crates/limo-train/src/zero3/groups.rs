//! ZeRO-3's flat parameter groups: the embedding, one group per decoder
//! layer, and the final norm with the head. A group's parameters are concatenated in checkpoint
//! order into one flat buffer, padded to a multiple of the world size; rank r owns slice r.
//! Because a shard is a slice of a known layout, a checkpoint written at one world size is
//! re-sliced for another without a conversion step.

use std::ops::Range;

use limo_model::params::{LayerWeights, ParamSpec, EMBED, FINAL_NORM, LM_HEAD};
use limo_model::Qwen2Config;

/// Parameters flattened together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub params: Vec<ParamSpec>,
}

impl Group {
    /// Elements of the group before padding.
    pub fn numel(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Where each parameter lies in the flat buffer.
    pub fn offsets(&self) -> Vec<Range<usize>> {
        let mut start = 0;
        self.params
            .iter()
            .map(|p| {
                let n: usize = p.shape.iter().product();
                start += n;
                start - n..start
            })
            .collect()
    }

    /// Elements per rank at `world` ranks (the padded length divided by `world`).
    pub fn shard_len(&self, world: usize) -> usize {
        self.numel().div_ceil(world)
    }

    /// The range of the flat (padded) buffer that `rank` owns.
    pub fn shard_range(&self, world: usize, rank: usize) -> Range<usize> {
        let len = self.shard_len(world);
        rank * len..(rank + 1) * len
    }

    /// Where the parameters whose name `pick` chooses lie in `rank`'s slice (slice offsets, in
    /// order): a parameter may fall partly on this rank.
    pub fn ranges_in_shard(
        &self,
        world: usize,
        rank: usize,
        pick: impl Fn(&str) -> bool,
    ) -> Vec<Range<usize>> {
        let shard = self.shard_range(world, rank);
        self.params
            .iter()
            .zip(self.offsets())
            .filter(|(p, _)| pick(&p.name))
            .filter_map(|(_, r)| {
                let (start, end) = (r.start.max(shard.start), r.end.min(shard.end));
                (start < end).then(|| start - shard.start..end - shard.start)
            })
            .collect()
    }
}

/// The groups of a model, in checkpoint order. A tied head shares the embedding's group, so
/// the last group then holds only the final norm.
pub fn groups(cfg: &Qwen2Config) -> Vec<Group> {
    let spec = |name: &str, shape: Vec<usize>| ParamSpec {
        name: name.into(),
        shape,
    };
    let mut groups = vec![Group {
        name: "embed".into(),
        params: vec![spec(EMBED, vec![cfg.vocab_size, cfg.hidden_size])],
    }];
    for layer in 0..cfg.num_hidden_layers {
        groups.push(Group {
            name: format!("layer.{layer}"),
            params: LayerWeights::specs(cfg, layer),
        });
    }
    let mut head = vec![spec(FINAL_NORM, vec![cfg.hidden_size])];
    if !cfg.tie_word_embeddings {
        head.push(spec(LM_HEAD, vec![cfg.vocab_size, cfg.hidden_size]));
    }
    groups.push(Group {
        name: "head".into(),
        params: head,
    });
    groups
}

/// Rank `rank`'s shard at `new_world` ranks, from the shards of all ranks at another world
/// size (in rank order). Padding is zero.
pub fn reshard<T: Copy + Default>(
    group: &Group,
    old_shards: &[Vec<T>],
    new_world: usize,
    rank: usize,
) -> Vec<T> {
    let numel = group.numel();
    let range = group.shard_range(new_world, rank);
    let old_len = old_shards.first().map_or(0, Vec::len);
    range
        .map(|i| {
            if i < numel && old_len > 0 {
                old_shards[i / old_len][i % old_len]
            } else {
                T::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(tied: bool) -> Qwen2Config {
        let mut config = limo_model::init::preset_config("tiny").unwrap();
        config["tie_word_embeddings"] = tied.into();
        config["vocab_size"] = 101.into();
        Qwen2Config::from_json(&config.to_string()).unwrap()
    }

    #[test]
    fn groups_cover_every_parameter_once_in_checkpoint_order() {
        for tied in [true, false] {
            let cfg = tiny(tied);
            let names: Vec<String> = groups(&cfg)
                .iter()
                .flat_map(|g| g.params.iter().map(|p| p.name.clone()))
                .collect();
            let expected: Vec<String> = limo_model::ModelWeights::specs(&cfg)
                .into_iter()
                .map(|s| s.name)
                .collect();
            assert_eq!(names, expected);
            assert_eq!(groups(&cfg).len(), cfg.num_hidden_layers + 2);
        }
    }

    #[test]
    fn shards_partition_the_padded_buffer() {
        let cfg = tiny(false);
        for g in groups(&cfg) {
            for world in 1..=5 {
                let len = g.shard_len(world);
                assert!(
                    len * world >= g.numel() && len * world < g.numel() + world,
                    "{} at {world}",
                    g.name
                );
                let ranges: Vec<_> = (0..world).map(|r| g.shard_range(world, r)).collect();
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                assert_eq!(ranges.last().unwrap().end, len * world);
            }
            let offsets = g.offsets();
            assert_eq!(offsets.last().unwrap().end, g.numel());
        }
    }

    #[test]
    fn resharding_equals_slicing_the_full_buffer() {
        let cfg = tiny(true);
        let group = &groups(&cfg)[1];
        let full: Vec<f32> = (0..group.numel()).map(|i| i as f32 + 1.0).collect();
        let shards_at = |world: usize| -> Vec<Vec<f32>> {
            (0..world)
                .map(|r| {
                    group
                        .shard_range(world, r)
                        .map(|i| full.get(i).copied().unwrap_or(0.0))
                        .collect()
                })
                .collect()
        };
        for (from, to) in [(4, 2), (2, 3), (3, 1), (1, 4), (3, 3)] {
            let old = shards_at(from);
            let direct = shards_at(to);
            for (rank, expected) in direct.iter().enumerate() {
                assert_eq!(
                    &reshard(group, &old, to, rank),
                    expected,
                    "{from} -> {to}, rank {rank}"
                );
            }
        }
    }

    #[test]
    fn ranges_in_a_shard_are_the_picked_parameters_cut_to_the_slice() {
        let cfg = tiny(false);
        for g in groups(&cfg) {
            let picked = |name: &str| name.ends_with("bias") || name.contains("norm");
            for world in 1..=5 {
                let mut seen = vec![false; g.shard_len(world) * world];
                for rank in 0..world {
                    let start = g.shard_range(world, rank).start;
                    let ranges = g.ranges_in_shard(world, rank, picked);
                    assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
                    for r in ranges {
                        assert!(r.start < r.end && r.end <= g.shard_len(world));
                        seen[start + r.start..start + r.end].fill(true);
                    }
                }
                // Exactly the picked parameters' elements, over all ranks.
                let mut want = vec![false; seen.len()];
                for (p, r) in g.params.iter().zip(g.offsets()) {
                    want[r].fill(picked(&p.name));
                }
                assert_eq!(seen, want, "{} at {world}", g.name);
            }
        }
    }
}
