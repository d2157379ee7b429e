//! ZeRO-3: the model's parameters live in flat groups (the embedding, one
//! group per decoder layer, the final norm with the head), and each rank keeps only its slice of
//! every group: the compute weights, the fp32 master, the Adam moments and the fp32 gradient
//! accumulator, all on the device it computes on (a GPU's memory in CUDA runs; only checkpoints
//! copy them to the host). The forward and the backward all-gather a group just before they use it and
//! drop it right after; gradients leave a layer through a reduce-scatter, so no rank ever holds
//! more than one layer's full weights and gradients.
//!
//! With activation checkpointing (the default) the forward keeps only each layer's input, and
//! its attention's output and log-sum-exp, and the backward runs the layer's forward again but
//! for the attention, gathered a second time (`train.recompute_attention` recomputes the
//! attention too, keeping only the input); without it the forward keeps every layer's
//! activations. Between the two, the first n layers are checkpointed and the rest keep theirs.
//!
//! The arithmetic is the single-process trainer's: at world size 1 the gathers and scatters are
//! copies and a run reproduces the transformers trajectory as before. At other world sizes the
//! only difference is the order in which partial gradient sums are added.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use limo_dist::comm::{Communicator, Started};
mod forward;
pub mod groups;
mod offload;
pub mod plan;

use std::sync::{Mutex, MutexGuard};

use groups::{groups, Group};
use limo_model::checkpoint::SafetensorFiles;
use limo_model::layer::{
    layer_backward, layer_forward, layer_forward_with_attention, LayerActivations, LayerContext,
};
use limo_model::{Batch, LayerWeights, ModelWeights, Qwen2Config};
use limo_ops::{
    embedding_backward, linear_cross_entropy_scaled_on_device, rms_norm_backward, rms_norm_forward,
    sum_of_squares_tensor, Clip, GradScale, RopeCache,
};

use crate::comm_thread::{CommThread, Pending};
use crate::config::{OptimizerOffload, ReduceDtype, TrainSection};
use crate::optim::{master_dtype, AdamW, AdamWSettings, Flat, MASTER};
use crate::profile::{Phase, Profiler};

/// One rank's part of a ZeRO-3 model and its optimizer.
pub struct ShardedModel {
    pub cfg: Qwen2Config,
    pub groups: Vec<Group>,
    /// The dtype the forward and backward compute in.
    pub dtype: DType,
    pub device: Device,
    /// One "parameter" per group: this rank's flat slice of it. Read it through
    /// [`Self::optimizer`], which first waits for an offloaded update in progress.
    optimizer: AdamW,
    /// This rank's slices in the compute dtype, on the device: what the all-gathers send.
    /// Behind a lock because an offloaded update hands them back while the forward runs.
    compute: Mutex<Vec<Tensor>>,
    /// An offloaded update still running on the host ([`offload`]).
    in_flight: Mutex<Option<offload::InFlight>>,
    /// Offload's pinned staging buffers and copy stream, between steps.
    #[cfg(feature = "cuda")]
    link: Mutex<Option<limo_ops::cuda::offload::HostLink>>,
    /// The first this many layers keep only their inputs in the forward and run again in the
    /// backward; the others keep every activation (`train.activation_checkpointing`; "auto"
    /// is every layer until the trainer sets the plan's choice).
    pub checkpointed_layers: usize,
    /// With checkpointing, recompute the attention too (else its output is kept).
    pub recompute_attention: bool,
    comm: CommThread,
    /// Phase timing of a step, for `limo bench step` (off unless started).
    pub profiler: Profiler,
    /// Rotary tables built once on the device; a batch gathers its rows by position.
    rope: RopeCache,
    /// The dtype gradients cross the reduce-scatter in (`train.reduce_dtype`).
    pub reduce_dtype: ReduceDtype,
    /// Where the optimizer state lives (`train.optimizer_offload`).
    offload: OptimizerOffload,
}

/// Index of the embedding group (layer i is group i + 1, the head group comes last).
const EMBED_GROUP: usize = 0;

impl ShardedModel {
    /// A model over this rank's master slices (from [`load_shards`] or a checkpoint), set up
    /// by `train`: Adam settings, activation checkpointing, reduce dtype, optimizer offload.
    pub fn new(
        cfg: Qwen2Config,
        shards: Vec<Flat>,
        dtype: DType,
        device: &Device,
        train: &TrainSection,
        comm: Box<dyn Communicator>,
    ) -> anyhow::Result<Self> {
        let settings = AdamWSettings {
            beta1: train.adam_beta1,
            beta2: train.adam_beta2,
            eps: train.adam_eps,
            weight_decay: train.weight_decay,
        };
        let offload = train.optimizer_offload;
        // Alone there is nothing to overlap. On a GPU the collectives are only enqueued (NCCL
        // runs them on its own stream): inline, the overlap happens on the device.
        let comm = if comm.world_size() == 1 || device.is_cuda() {
            CommThread::inline(comm)
        } else {
            CommThread::spawn(comm)
        };
        let groups = groups(&cfg);
        let (world, rank) = (comm.world_size(), comm.rank());
        let skip_decay = groups
            .iter()
            .map(|g| g.ranges_in_shard(world, rank, |name| !train.no_decay.decays(name)))
            .collect();
        let mut optimizer = AdamW::new(
            settings,
            &shards,
            match offload {
                OptimizerOffload::None => device,
                OptimizerOffload::Cpu => &Device::Cpu,
            },
        )?;
        optimizer.set_skip_decay(skip_decay)?;
        let layers = cfg.num_hidden_layers;
        let checkpointed_layers = train
            .activation_checkpointing
            .fixed(layers)?
            .unwrap_or(layers);
        let mut model = Self {
            rope: RopeCache::new(cfg.head_dim, cfg.rope_theta, dtype, device),
            groups,
            cfg,
            dtype,
            device: device.clone(),
            optimizer,
            offload,
            compute: Mutex::new(Vec::new()),
            in_flight: Mutex::new(None),
            #[cfg(feature = "cuda")]
            link: Mutex::new(None),
            checkpointed_layers,
            recompute_attention: train.recompute_attention,
            comm,
            profiler: Profiler::default(),
            reduce_dtype: train.reduce_dtype,
        };
        model.refresh_compute()?;
        Ok(model)
    }

    pub fn comm(&self) -> &dyn Communicator {
        &self.comm
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// The compute slices from the master slices (after an update or a restore), on the device.
    pub fn refresh_compute(&mut self) -> anyhow::Result<()> {
        self.settle(self.groups.len())?;
        let slices = self.compute_slices()?;
        *self.slices() = slices;
        Ok(())
    }

    fn slices(&self) -> MutexGuard<'_, Vec<Tensor>> {
        self.compute
            .lock()
            .expect("no thread panicked holding the compute slices")
    }

    /// The optimizer, once any offloaded update has finished (checkpoints read it).
    pub fn optimizer(&self) -> anyhow::Result<&AdamW> {
        self.settle(self.groups.len())?;
        Ok(&self.optimizer)
    }

    /// Takes the arrivals of an offloaded update until groups `0..upto` are in place. Group g's
    /// all-gather calls it first: the host update of later groups overlaps the forward.
    fn settle(&self, upto: usize) -> anyhow::Result<()> {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        let Some(update) = in_flight.as_mut() else {
            return Ok(());
        };
        // Waiting here is the host update holding the device back: the optimizer's share.
        let _optimizer = (update.received < upto.min(self.groups.len()))
            .then(|| self.profiler.phase(Phase::Optimizer));
        while update.received < upto.min(self.groups.len()) {
            let g = update.received;
            let arrival = match update.next() {
                Ok(a) => a,
                Err(e) => {
                    // Gone: the thread's own error, or its panic.
                    let update = in_flight.take().expect("present");
                    update.join()?;
                    return Err(
                        e.context(format!("optimizer offload, group {}", self.groups[g].name))
                    );
                }
            };
            match arrival {
                offload::Arrival::Slice(t) => self.slices()[g] = t.to_device(&self.device)?,
                #[cfg(feature = "cuda")]
                offload::Arrival::Uploaded(event) => {
                    limo_ops::cuda::offload::HostLink::before_compute(&self.device, &event)?
                }
            }
        }
        if update.received == self.groups.len() {
            let returned = in_flight.take().expect("present").join()?;
            #[cfg(feature = "cuda")]
            if let Some(link) = returned.link {
                *self.link.lock().expect("not poisoned") = Some(link);
            }
            let _ = returned;
        }
        Ok(())
    }

    fn compute_slices(&self) -> anyhow::Result<Vec<Tensor>> {
        (0..self.groups.len())
            .map(|g| {
                let master = self.optimizer.part(g, MASTER)?;
                // A copy even in the master dtype: the update writes the master in place. Only
                // the view's elements (`copy` would clone the whole [master | m | v] storage).
                let compute = if self.dtype == master.dtype() {
                    master.force_contiguous()?
                } else {
                    master.to_dtype(self.dtype)?
                };
                // Offloaded: cast on the host, and only the compute dtype crosses to the device.
                Ok(compute.to_device(&self.device)?)
            })
            .collect()
    }

    /// Replaces the optimizer state with a checkpoint's slices.
    pub fn restore_state(
        &mut self,
        master: &[Flat],
        exp_avg: &[Flat],
        exp_avg_sq: &[Flat],
        updates: u64,
    ) -> anyhow::Result<()> {
        self.settle(self.groups.len())?;
        self.optimizer.restore(master, exp_avg, exp_avg_sq)?;
        self.optimizer.updates = updates;
        self.refresh_compute()
    }

    /// Byte counts of the state this rank holds (its slices of every group).
    pub fn state_bytes(&self) -> StateBytes {
        let slices: usize = self.optimizer.lens().iter().sum();
        let master = self.optimizer.master_dtype().size_in_bytes() * slices;
        StateBytes {
            compute: slices * self.dtype.size_in_bytes(),
            master,
            adam: 2 * master,
            grads: master,
        }
    }

    /// The result of a collective started with `submit`, ordered before what comes next. On
    /// CPU ranks this waits for the communication thread; on CUDA it only makes the compute
    /// stream wait for the communication stream.
    fn wait(&self, pending: Pending<Started>) -> anyhow::Result<Tensor> {
        let _comm = self.profiler.phase(Phase::Comm);
        pending.wait()?.finish()
    }

    /// Adds a reduce-scattered gradient slice to group `g`'s accumulator, on the device (in
    /// place on a GPU: the accumulators are this model's own). The group's first slice of the
    /// step becomes its accumulator: a fresh buffer of the collective, which nothing else holds.
    fn accumulate(&self, grads: &mut Grads, g: usize, slice: &Tensor) -> anyhow::Result<()> {
        let master = self.optimizer.master_dtype();
        grads.0[g] = Some(match grads.0[g].take() {
            Some(acc) => limo_ops::add_assign(acc, slice)?,
            None => slice.to_dtype(master)?,
        });
        Ok(())
    }

    /// Starts the all-gather of group `g` (in the compute dtype); [`Self::unflatten`] its
    /// result. Started one group ahead, it runs while the current group computes.
    fn start_gather(&self, g: usize) -> anyhow::Result<Pending<Started>> {
        self.settle(g + 1)?;
        let (mine, name) = (self.slices()[g].clone(), self.groups[g].name.clone());
        let _comm = self.profiler.phase(Phase::Comm);
        Ok(self.comm.submit(move |c| {
            c.start_all_gather(&mine)
                .with_context(|| format!("all-gather of group {name}"))
        }))
    }

    /// The parameters of group `g` from its gathered flat buffer.
    fn unflatten(&self, g: usize, flat: anyhow::Result<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let flat = flat?;
        let group = &self.groups[g];
        group
            .params
            .iter()
            .zip(group.offsets())
            .map(|(p, at)| {
                Ok(flat
                    .narrow(0, at.start, at.len())?
                    .reshape(p.shape.as_slice())?)
            })
            .collect()
    }

    /// The full parameters of group `g` (a collective).
    fn gather(&self, g: usize) -> anyhow::Result<Vec<Tensor>> {
        self.unflatten(g, self.wait(self.start_gather(g)?))
    }

    fn layer_weights(
        &self,
        layer: usize,
        flat: anyhow::Result<Tensor>,
    ) -> anyhow::Result<LayerWeights> {
        let tensors: [Tensor; 12] = self
            .unflatten(layer + 1, flat)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("a layer group holds 12 tensors"))?;
        Ok(LayerWeights::from_tensors(tensors))
    }

    /// Every parameter, gathered (a collective): for evaluation, not for training.
    pub fn full_weights(&self) -> anyhow::Result<ModelWeights> {
        let mut tensors = Vec::new();
        for g in 0..self.groups.len() {
            tensors.extend(self.gather(g)?);
        }
        let mut tensors = tensors.into_iter();
        Ok(ModelWeights::build(&self.cfg, |_| {
            Ok(tensors.next().expect("groups cover every parameter"))
        })?)
    }

    /// Empty gradient accumulators for one step, one per group slice (see [`Grads`]).
    pub fn zero_grads(&self) -> Grads {
        Grads(vec![None; self.optimizer.lens().len()])
    }

    /// Forward and backward of this rank's micro-batch; adds this rank's slice of the gradient
    /// of `grad_scale * loss_sum` (per token with [`GradScale::PerToken`]), summed over all
    /// ranks, to `grads`. Returns this rank's loss sum (weighted by a per-token scale), on the
    /// device. Every rank must call it the same number of times (it is made of
    /// collectives).
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        grad_scale: GradScale,
        loss_chunk: usize,
        grads: &mut Grads,
    ) -> anyhow::Result<MicroBatchLoss> {
        let cfg = &self.cfg;
        let layers = cfg.num_hidden_layers;
        let head_group = layers + 1;
        let prof = &self.profiler;
        let copy = prof.phase(Phase::Copy);
        let ids = Tensor::from_slice(&batch.input_ids, batch.tokens(), &self.device)?;
        let rope = self.rope.tables(&batch.positions)?;
        drop(copy);
        let ctx = LayerContext {
            config: cfg,
            rope: &rope,
            cu_seqlens: &batch.cu_seqlens,
        };

        let forward = prof.phase(Phase::Forward);
        let mut saved: Vec<Saved> = Vec::with_capacity(layers);
        let (checkpointed, recompute_attention) =
            (self.checkpointed_layers, self.recompute_attention);
        let trunk = self.forward_layers(&ids, &ctx, |input, activations| {
            saved.push(match (saved.len() < checkpointed, recompute_attention) {
                (true, true) => Saved::Input(input),
                (true, false) => Saved::InputAttention(input, activations.attention()),
                (false, _) => Saved::Activations(activations),
            })
        })?;
        let x = trunk.x;
        drop(forward);

        let head_loss = prof.phase(Phase::HeadLoss);
        let (final_norm, head_weight) = self.head_weights(trunk.head_gather, trunk.tied_head)?;
        let (normed, rstd) = rms_norm_forward(&x, &final_norm, cfg.rms_norm_eps)?;
        let head = linear_cross_entropy_scaled_on_device(
            &normed,
            &head_weight,
            &batch.targets,
            Some(grad_scale),
            loss_chunk,
        )?;
        drop((head_weight, normed));
        let d_normed = head.d_hidden.context("the loss returns d_hidden")?;
        // Vocabulary-sized gradients add up in the master dtype: in bf16 a frequent token's
        // row would lose most of its many contributions. (One expression: a shadowed binding
        // would keep the compute-dtype copy alive to the end of the backward.)
        let master = self.optimizer.master_dtype();
        let d_head = (head.d_weight.context("the loss returns d_weight")?).to_dtype(master)?;
        let (mut dx, d_final_norm) = rms_norm_backward(&d_normed, &x, &final_norm, &rstd)?;
        // Nothing of the head's forward outlives it: `final_norm` is a view into the head
        // group's gathered buffer, so with an untied head it would keep the whole head weight
        // alive through the layers' backward.
        drop((x, final_norm, d_normed));
        let d_head = if cfg.tie_word_embeddings {
            self.scatter_grads(head_group, &[d_final_norm], grads)?;
            Some(d_head)
        } else {
            self.scatter_grads(head_group, &[d_final_norm, d_head], grads)?;
            None
        };
        drop(head_loss);
        let _backward = prof.phase(Phase::Backward);

        // Backward: layer i - 1's all-gather and layer i + 1's reduce-scatter run while layer
        // i computes.
        let mut next = (layers > 0)
            .then(|| self.start_gather(layers))
            .transpose()?;
        let mut scattering: Option<(usize, Pending<Started>)> = None;
        for i in (0..layers).rev() {
            let w = self.layer_weights(i, self.wait(next.take().expect("started")))?;
            if i > 0 {
                next = Some(self.start_gather(i)?);
            }
            let activations = match saved.pop().expect("one per layer") {
                Saved::Input(input) => layer_forward(&w, &input, &ctx)?.1,
                Saved::InputAttention(input, attention) => {
                    layer_forward_with_attention(&w, &input, &ctx, attention)?.1
                }
                Saved::Activations(a) => a,
            };
            let (d_in, layer_grads) = layer_backward(&w, &dx, &activations, &ctx)?;
            drop((w, activations));
            // The previous layer's reduce-scatter ran during this layer's backward; finishing it
            // before starting this one frees its staging buffer for this one to reuse.
            if let Some((g, pending)) = scattering.take() {
                self.accumulate(grads, g, &self.wait(pending)?)?;
            }
            let started = self.start_scatter(i + 1, &layer_grads.tensors().map(Tensor::clone))?;
            scattering = Some((i + 1, started));
            dx = d_in;
        }
        if let Some((g, pending)) = scattering {
            self.accumulate(grads, g, &self.wait(pending)?)?;
        }

        // The embedding's gradient: the token rows of dx added into their tokens' rows (plus
        // the tied head's gradient).
        let d_embed = embedding_backward(
            &dx,
            &batch.input_ids,
            cfg.vocab_size,
            d_head.as_ref(),
            master,
        )?;
        drop(d_head);
        self.scatter_grads(EMBED_GROUP, &[d_embed], grads)?;
        Ok(MicroBatchLoss {
            loss_sum: head.loss_sum,
            per_token_loss: head.per_token_loss,
        })
    }

    /// The full gradient of every parameter under its Hugging Face name, from the accumulators
    /// of a world-size-1 model (where this rank's slices are the whole groups).
    pub fn named_grads(&self, grads: &[Tensor]) -> anyhow::Result<Vec<(String, Tensor)>> {
        if self.world_size() != 1 {
            bail!("named_grads needs the whole gradient: world size 1");
        }
        let mut named = Vec::new();
        for (group, grad) in self.groups.iter().zip(grads) {
            for (p, at) in group.params.iter().zip(group.offsets()) {
                let t = grad.narrow(0, at.start, at.len())?;
                named.push((p.name.clone(), t.reshape(p.shape.as_slice())?));
            }
        }
        Ok(named)
    }

    /// Flattens a group's full gradients in the master dtype, reduce-scatters them (a sum over
    /// ranks) and adds this rank's slice to its accumulator. Reducing in fp32 rather than the
    /// compute dtype doubles the bytes of a bf16 run's scatter and keeps every rank's partial
    /// sum exact to fp32.
    fn scatter_grads(&self, g: usize, full: &[Tensor], grads: &mut Grads) -> anyhow::Result<()> {
        let mine = self.wait(self.start_scatter(g, full)?)?;
        self.accumulate(grads, g, &mine)
    }

    /// Starts the reduce-scatter of [`Self::scatter_grads`]; the result is this rank's slice.
    fn start_scatter(&self, g: usize, full: &[Tensor]) -> anyhow::Result<Pending<Started>> {
        let group = &self.groups[g];
        let wire = self.reduce_dtype.wire(self.optimizer.master_dtype());
        // Each piece is written, converted, into one flat buffer: a bf16 layer's staging peaks
        // at its gradients + the fp32 flat (6 B per parameter; on the CPU, + one converted
        // piece), and on a GPU each element is read and written once.
        let padded = group.shard_len(self.world_size()) * self.world_size();
        let flat = limo_ops::flatten_into(full, wire, padded)?;
        let name = group.name.clone();
        let _comm = self.profiler.phase(Phase::Comm);
        Ok(self.comm.submit(move |c| {
            c.start_reduce_scatter(&flat)
                .with_context(|| format!("reduce-scatter of group {name}"))
        }))
    }

    /// Clips and applies one AdamW update to this rank's slices. Returns the global squared
    /// gradient norm (all-reduced over ranks), still on the device: the update reads it there,
    /// so nothing waits for the GPU between the backward and the update. A norm that is not
    /// finite leaves the weights untouched; [`Self::read_step`] then stops the run.
    pub fn step(
        &mut self,
        grads: &[Tensor],
        lr: f64,
        max_grad_norm: f64,
    ) -> anyhow::Result<Tensor> {
        let optimizer = self.profiler.phase(Phase::Optimizer);
        let mut local = Tensor::zeros(1, DType::F64, &self.device)?;
        for g in grads {
            local = (local + sum_of_squares_tensor(g)?)?;
        }
        let comm = self.profiler.phase(Phase::Comm);
        let norm_sq = self
            .comm
            .all_reduce(&local)
            .context("all-reduce of the gradient norm")?;
        drop(comm);
        self.settle(self.groups.len())?;
        if self.offload == OptimizerOffload::Cpu && self.offload_overlaps() {
            drop(optimizer);
            self.start_offloaded(grads, lr, max_grad_norm, &norm_sq)?;
            return Ok(norm_sq);
        }
        // On CUDA in bf16 the kernel writes the compute slices too; elsewhere they are copied.
        let fused = self.device.is_cuda()
            && self.dtype == DType::BF16
            && self.offload == OptimizerOffload::None;
        let clip = Clip {
            norm_sq: &norm_sq,
            max_norm: max_grad_norm,
        };
        let compute = self.slices().clone();
        self.optimizer
            .step(grads, lr, Some(clip), fused.then_some(compute.as_slice()))?;
        if !fused {
            *self.slices() = self.compute_slices()?;
        }
        drop(optimizer);
        Ok(norm_sq)
    }

    /// Whether an offloaded update runs on the host thread beside the next forward: on the CPU
    /// device, and on CUDA for bf16 compute over an fp32 master (the pinned path). Other CUDA
    /// runs (f32 compute) take the synchronous path.
    fn offload_overlaps(&self) -> bool {
        self.device.is_cpu()
            || (self.dtype == DType::BF16 && self.optimizer.master_dtype() == DType::F32)
    }

    /// Hands an offloaded update to the host thread: the gradients go down (on CUDA, pinned, on
    /// the copy stream), the host reads the global norm (it waits for the backward here, as it
    /// must before any host update) and the thread updates group after group while this one
    /// returns to the next forward. A norm that is not finite starts nothing.
    fn start_offloaded(
        &mut self,
        grads: &[Tensor],
        lr: f64,
        max_grad_norm: f64,
        norm_sq: &Tensor,
    ) -> anyhow::Result<()> {
        let work = if self.device.is_cpu() {
            offload::Work::Host {
                grads: grads.to_vec(),
                dtype: self.dtype,
            }
        } else {
            self.pinned_work(grads)?
        };
        let norm = norm_sq.to_vec1::<f64>()?[0].sqrt();
        if !norm.is_finite() {
            #[cfg(feature = "cuda")]
            if let offload::Work::Pinned { link, events, .. } = work {
                for e in &events {
                    e.synchronize().map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                *self.link.lock().expect("not poisoned") = Some(link);
            }
            return Ok(());
        }
        let hyper = self
            .optimizer
            .next_update(lr, limo_ops::clip_coefficient(norm, max_grad_norm));
        let skip_decay = self.optimizer.skip_decay().to_vec();
        let update = offload::start(self.optimizer.shared_state(), hyper, skip_decay, work);
        *self.in_flight.lock().expect("not poisoned") = Some(update);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn pinned_work(&self, grads: &[Tensor]) -> anyhow::Result<offload::Work> {
        let mut link = match self.link.lock().expect("not poisoned").take() {
            Some(link) => link,
            None => limo_ops::cuda::offload::HostLink::new(&self.device, self.optimizer.lens())?,
        };
        let events = link.download(grads)?;
        Ok(offload::Work::Pinned {
            link,
            events,
            grads: grads.to_vec(),
            slices: self.slices().clone(),
        })
    }

    #[cfg(not(feature = "cuda"))]
    fn pinned_work(&self, _grads: &[Tensor]) -> anyhow::Result<offload::Work> {
        bail!("optimizer offload on a GPU needs the cuda build")
    }

    /// The step's one read from the device: the loss sum over all ranks (from this rank's
    /// `loss_sum`) and the global gradient norm (from [`Self::step`]'s squared norm). Stops the
    /// run when the norm is not finite (the update has skipped it).
    pub fn read_step(
        &self,
        loss_sum: &Tensor,
        norm_sq: &Tensor,
        step: usize,
    ) -> anyhow::Result<(f64, f64)> {
        let comm = self.profiler.phase(Phase::Comm);
        let total = self
            .comm
            .all_reduce(loss_sum)
            .context("all-reduce of the loss")?;
        drop(comm);
        let read = Tensor::cat(&[total, norm_sq.to_device(&self.device)?], 0)?.to_vec1::<f64>()?;
        let norm = read[1].sqrt();
        if !norm.is_finite() {
            bail!("step {step}: gradient norm is {norm}; stopping before the weights are damaged");
        }
        Ok((read[0], norm))
    }

    /// Sums scalars over ranks (target and token counts), in rank order: one collective and
    /// one read for all of them.
    pub fn sum_over_ranks<const N: usize>(&self, values: [f64; N]) -> anyhow::Result<[f64; N]> {
        let _comm = self.profiler.phase(Phase::Comm);
        let sums = self
            .comm
            .all_reduce(&Tensor::new(&values, &self.device)?)?
            .to_vec1::<f64>()?;
        Ok(sums.try_into().expect("an all-reduce keeps the length"))
    }
}

/// What the forward and backward of one micro-batch return besides the gradients.
pub struct MicroBatchLoss {
    /// Sum of this rank's per-token losses over its targets (weighted, with per-token
    /// weights): `[1]` f64 on the device.
    pub loss_sum: Tensor,
    /// `[N]` cross-entropy per token of the flat batch, 0 where not a target.
    pub per_token_loss: Tensor,
}

/// Bytes of one rank's state, by kind.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StateBytes {
    /// The compute-dtype slices the all-gathers send.
    pub compute: usize,
    /// Master weights (fp32, f64 for f64 runs).
    pub master: usize,
    /// Both Adam moments.
    pub adam: usize,
    /// The gradient accumulators.
    pub grads: usize,
}

impl StateBytes {
    pub fn total(&self) -> usize {
        self.compute + self.master + self.adam + self.grads
    }
}

/// A step's gradient accumulators, one per group slice of this rank, in the master dtype, on
/// the device. Each starts empty and takes its group's first reduce-scattered slice as it is:
/// no zeros to fill and add, and none of the fp32 slices exists before the backward reaches
/// its group (with one micro-batch per step, the forward runs without them).
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    /// The accumulated slices, every group's; an error names a group no micro-batch reached.
    pub fn slices(self) -> anyhow::Result<Vec<Tensor>> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(g, t)| t.with_context(|| format!("group {g} received no gradient this step")))
            .collect()
    }
}

/// Makes every rank fail when any rank's `result` is an error, so that one rank's bad input
/// stops the job at once instead of leaving the others waiting in a collective. A failed rank
/// returns its own error; the others return one naming the failed ranks.
pub fn agree<T>(
    comm: &dyn Communicator,
    device: &Device,
    result: anyhow::Result<T>,
    what: &str,
) -> anyhow::Result<T> {
    let flag = f64::from(u8::from(result.is_err()));
    let failed = comm.all_gather(&Tensor::new(&[flag], device)?);
    let value = result?;
    let failed = failed?.to_vec1::<f64>()?;
    let ranks: Vec<usize> = (0..failed.len()).filter(|&r| failed[r] != 0.0).collect();
    if !ranks.is_empty() {
        bail!("{what} failed on rank(s) {ranks:?}; see their errors");
    }
    Ok(value)
}

/// Rank `rank`'s slices (of `world`) of every group's master weights, read from a Hugging Face
/// checkpoint one parameter at a time, so a rank never holds more than one full parameter.
pub fn load_shards(
    cfg: &Qwen2Config,
    files: &SafetensorFiles,
    compute: DType,
    world: usize,
    rank: usize,
) -> anyhow::Result<Vec<Flat>> {
    let master = master_dtype(compute);
    let mut shards = Vec::new();
    for group in groups(cfg) {
        let want = group.shard_range(world, rank);
        let mut pieces = Vec::new();
        for (spec, at) in group.params.iter().zip(group.offsets()) {
            let (start, end) = (at.start.max(want.start), at.end.min(want.end));
            if start >= end {
                continue;
            }
            let full = files.load_param(spec, master)?.flatten_all()?;
            pieces.push(full.narrow(0, start - at.start, end - start)?);
        }
        let mut shard = Flat::from_tensor(&cat_or_empty(&pieces, master)?, master)?;
        shard.resize(want.len());
        shards.push(shard);
    }
    Ok(shards)
}

/// What the forward keeps of a layer for its backward.
enum Saved {
    /// The layer's input: the backward recomputes the rest.
    Input(Tensor),
    /// The layer's input and its attention's output and log-sum-exp: the backward recomputes
    /// the rest but the attention.
    InputAttention(Tensor, (Tensor, Tensor)),
    Activations(LayerActivations),
}

fn cat_or_empty(pieces: &[Tensor], dtype: DType) -> candle_core::Result<Tensor> {
    if pieces.is_empty() {
        Tensor::zeros(0, dtype, &Device::Cpu)
    } else {
        Tensor::cat(pieces, 0)
    }
}
