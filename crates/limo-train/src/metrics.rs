//! Per-step metrics as JSON lines in `<output>/metrics.jsonl`, and the loss curve as a PNG, like
//! LLaMA-Factory's `plot_loss`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    pub clip_coef: f64,
    pub n_target_tokens: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Appends one line and flushes it, so a killed run keeps every step it finished.
pub fn append(path: &Path, metrics: &StepMetrics) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(metrics)?)?;
    Ok(())
}

pub fn read(path: &Path) -> anyhow::Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect()
}

/// Drops the lines of steps after `step` (a resumed run redoes them).
pub fn truncate_after(path: &Path, step: usize) -> anyhow::Result<()> {
    let kept: Vec<StepMetrics> = read(path)?.into_iter().filter(|m| m.step <= step).collect();
    let mut text = String::new();
    for m in kept {
        text.push_str(&serde_json::to_string(&m)?);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("{}", path.display()))
}

/// Draws loss per step (thin) and its moving average (thick) on a white 800x500 canvas with a
/// frame. Text needs system fonts, which servers lack, so the figure carries no labels; the
/// numbers are in metrics.jsonl.
pub fn plot_loss(metrics: &[StepMetrics], path: &Path) -> anyhow::Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (x0, x1) = (
        metrics[0].step as f64,
        metrics[metrics.len() - 1].step as f64,
    );
    let lo = metrics.iter().map(|m| m.loss).fold(f64::INFINITY, f64::min);
    let hi = metrics
        .iter()
        .map(|m| m.loss)
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (lo - pad)..(hi + pad))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let raw = metrics.iter().map(|m| (m.step as f64, m.loss));
    chart
        .draw_series(LineSeries::new(raw, RGBColor(150, 180, 230)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let window = (metrics.len() / 20).max(1);
    let smooth = metrics.iter().enumerate().map(|(i, m)| {
        let start = i.saturating_sub(window - 1);
        let mean = metrics[start..=i].iter().map(|m| m.loss).sum::<f64>() / (i - start + 1) as f64;
        (m.step as f64, mean)
    });
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(3)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.draw(&Rectangle::new(
        [(19, 19), (781, 481)],
        BLACK.stroke_width(1),
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
