//! Where a training step's time goes, for `limo bench step`: the step is cut into phases
//! (forward, backward, head + loss, optimizer, communication, host/device copies) by marks taken
//! as the host enters and leaves each one. On the CPU a mark is a wall-clock instant; on CUDA it
//! is an event recorded on the compute stream, so a phase's share is the device time between its
//! marks (host time too where the host holds the device back). The time between consecutive marks
//! goes to the phase innermost at the first one, so the phases add up to the whole step.
//! Switched off (the trainer's case) a phase guard costs one uncontended lock.

use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Backward,
    HeadLoss,
    Optimizer,
    /// Issuing and waiting on collectives (all-gathers, reduce-scatters, all-reduces).
    Comm,
    /// Host<->device copies and host-side conversions of the state.
    Copy,
    /// Everything else (zeroing gradient buffers, batch set-up).
    Other,
}

pub const PHASES: [Phase; 7] = [
    Phase::Forward,
    Phase::Backward,
    Phase::HeadLoss,
    Phase::Optimizer,
    Phase::Comm,
    Phase::Copy,
    Phase::Other,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::HeadLoss => "head + loss",
            Phase::Optimizer => "optimizer",
            Phase::Comm => "communication",
            Phase::Copy => "host<->device copies",
            Phase::Other => "other",
        }
    }

    fn index(self) -> usize {
        PHASES.iter().position(|&p| p == self).expect("listed")
    }
}

/// Seconds per phase of one step, indexed like [`PHASES`].
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes(pub [f64; PHASES.len()]);

impl PhaseTimes {
    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }

    pub fn get(&self, phase: Phase) -> f64 {
        self.0[phase.index()]
    }
}

enum Mark {
    Wall(Instant),
    #[cfg(feature = "cuda")]
    Event(candle_core::cuda_backend::cudarc::driver::CudaEvent),
}

/// The marks of the step being recorded.
struct Timeline {
    #[cfg(feature = "cuda")]
    stream: Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>>,
    /// Each mark with the phase that runs after it.
    marks: Vec<(Mark, Phase)>,
    /// Phases entered and not yet left, innermost last.
    stack: Vec<Phase>,
    /// The first failure to record an event (reported by `end`).
    error: Option<String>,
}

impl Timeline {
    fn mark(&mut self) {
        let phase = *self.stack.last().unwrap_or(&Phase::Other);
        #[cfg(feature = "cuda")]
        if let Some(stream) = &self.stream {
            use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
            let event = stream
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .and_then(|e| e.record(stream).map(|()| e));
            match event {
                Ok(e) => self.marks.push((Mark::Event(e), phase)),
                Err(e) => {
                    self.error.get_or_insert_with(|| e.to_string());
                }
            }
            return;
        }
        self.marks.push((Mark::Wall(Instant::now()), phase));
    }
}

/// Records phase marks while a step is being profiled; does nothing otherwise.
#[derive(Default)]
pub struct Profiler(Mutex<Option<Timeline>>);

/// Leaves its phase when dropped.
pub struct PhaseGuard<'a> {
    profiler: &'a Profiler,
    depth: usize,
}

impl Profiler {
    /// Starts recording a step on `device`.
    pub fn begin(&self, device: &Device) -> anyhow::Result<()> {
        #[cfg(feature = "cuda")]
        let stream = match device {
            Device::Cuda(d) => Some(d.cuda_stream()),
            _ => None,
        };
        #[cfg(not(feature = "cuda"))]
        let _ = device;
        let mut timeline = Timeline {
            #[cfg(feature = "cuda")]
            stream,
            marks: Vec::new(),
            stack: Vec::new(),
            error: None,
        };
        timeline.mark();
        *self.0.lock().expect("not poisoned") = Some(timeline);
        Ok(())
    }

    /// Enters `phase` until the guard is dropped.
    pub fn phase(&self, phase: Phase) -> PhaseGuard<'_> {
        let mut inner = self.0.lock().expect("not poisoned");
        let depth = match inner.as_mut() {
            Some(t) => {
                t.stack.push(phase);
                t.mark();
                t.stack.len()
            }
            None => 0,
        };
        PhaseGuard {
            profiler: self,
            depth,
        }
    }

    /// Stops recording; the seconds of each phase (waits for the device to finish the step).
    pub fn end(&self) -> anyhow::Result<PhaseTimes> {
        let mut timeline = self
            .0
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| anyhow::anyhow!("the profiler was not started"))?;
        timeline.stack.clear();
        timeline.mark();
        if let Some(e) = timeline.error {
            anyhow::bail!("recording a CUDA event: {e}");
        }
        let mut times = PhaseTimes::default();
        for pair in timeline.marks.windows(2) {
            let ((from, phase), (to, _)) = (&pair[0], &pair[1]);
            times.0[phase.index()] += seconds_between(from, to)?;
        }
        Ok(times)
    }
}

fn seconds_between(from: &Mark, to: &Mark) -> anyhow::Result<f64> {
    Ok(match (from, to) {
        (Mark::Wall(a), Mark::Wall(b)) => b.duration_since(*a).as_secs_f64(),
        #[cfg(feature = "cuda")]
        (Mark::Event(a), Mark::Event(b)) => {
            b.synchronize()?;
            f64::from(a.elapsed_ms(b)?) * 1e-3
        }
        #[cfg(feature = "cuda")]
        _ => anyhow::bail!("a step mixed wall-clock and CUDA-event marks"),
    })
}

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        if self.depth == 0 {
            return;
        }
        let mut inner = self.profiler.0.lock().expect("not poisoned");
        if let Some(t) = inner.as_mut() {
            t.mark();
            t.stack.truncate(self.depth - 1);
            // The mark above closes this phase: what follows belongs to the enclosing one.
            if let Some(last) = t.marks.last_mut() {
                last.1 = *t.stack.last().unwrap_or(&Phase::Other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn nested_phases_partition_the_step() -> anyhow::Result<()> {
        let p = Profiler::default();
        // Off: guards do nothing and end() says so.
        drop(p.phase(Phase::Forward));
        assert!(p.end().is_err());

        p.begin(&Device::Cpu)?;
        let started = Instant::now();
        {
            let _f = p.phase(Phase::Forward);
            std::thread::sleep(Duration::from_millis(30));
            {
                let _c = p.phase(Phase::Comm);
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(5));
        let times = p.end()?;
        let wall = started.elapsed().as_secs_f64();
        // Lower bounds only: each catches a misattribution (Comm counted in Forward leaves Comm
        // at 0; the time after Comm counted in Comm leaves Forward at 30 ms).
        assert!(times.get(Phase::Forward) >= 0.040, "{times:?}");
        assert!(times.get(Phase::Comm) >= 0.020, "{times:?}");
        assert!(times.get(Phase::Other) >= 0.005, "{times:?}");
        assert_eq!(times.get(Phase::Backward), 0.0);
        assert!(times.total() <= wall + 1e-3, "{} vs {wall}", times.total());
        Ok(())
    }
}
