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
    /// The validation loss after this step, on steps that evaluate (`train.eval_steps`,
    /// `eval_every_epoch`, the last step with `data.val_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// Appends one line and flushes it, so a killed run keeps every step it finished.
pub fn append(path: &Path, metrics: &StepMetrics) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(metrics)?)
        .with_context(|| format!("appending to {}", path.display()))
}

pub fn read(path: &Path) -> anyhow::Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    // A last line without its newline may be an append cut short (a full disk, a kill): that
    // step has no checkpoint yet, so a resume redoes it. Any other bad line is an error.
    let (whole, tail) = match text.rfind('\n') {
        Some(end) => text.split_at(end + 1),
        None => ("", text.as_str()),
    };
    let mut metrics = (whole.lines().enumerate())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<StepMetrics>>>()?;
    if !tail.trim().is_empty() {
        match serde_json::from_str(tail) {
            Ok(m) => metrics.push(m),
            Err(_) => tracing::warn!(
                "{}: line {} is cut short (a write that failed); dropped",
                path.display(),
                whole.lines().count() + 1
            ),
        }
    }
    Ok(metrics)
}

/// Drops the lines of steps after `step` (a resumed run redoes them). The file is replaced
/// whole (written aside, then renamed): a failure part-way leaves the old one.
pub fn truncate_after(path: &Path, step: usize) -> anyhow::Result<()> {
    let kept: Vec<StepMetrics> = read(path)?.into_iter().filter(|m| m.step <= step).collect();
    let mut text = String::new();
    for m in kept {
        text.push_str(&serde_json::to_string(&m)?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("rewriting {}", path.display()))
}

/// The font of the plot, compiled in: servers often have no fonts installed.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() -> anyhow::Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    anyhow::ensure!(ok, "the embedded plot font did not load");
    Ok(())
}

/// Draws loss per step (thin) and its moving average (thick), with labelled axes, as
/// LLaMA-Factory's `plot_loss` does, and the validation loss where a step has one. Drawn aside and renamed: a failure (a full disk) leaves
/// the old plot or none, never a cut-off PNG.
pub fn plot_loss(metrics: &[StepMetrics], path: &Path) -> anyhow::Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    // The backend picks the format from the extension: the temporary name ends in .png.
    let tmp = path.with_extension("partial.png");
    let drawn = draw_loss(metrics, &tmp)
        .and_then(|()| std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display())));
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn
}

fn draw_loss(metrics: &[StepMetrics], path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (x0, x1) = (
        metrics[0].step as f64,
        metrics[metrics.len() - 1].step as f64,
    );
    let eval: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.eval_loss.map(|l| (m.step as f64, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let losses = || {
        metrics
            .iter()
            .map(|m| m.loss)
            .chain(eval.iter().map(|e| e.1))
    };
    let lo = losses().fold(f64::INFINITY, f64::min);
    let hi = losses().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let raw = metrics.iter().map(|m| (m.step as f64, m.loss));
    chart
        .draw_series(LineSeries::new(raw, RGBColor(150, 180, 230)))
        .map_err(|e| err(&e))?
        .label("loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(150, 180, 230)));
    let window = (metrics.len() / 20).max(1);
    let smooth = metrics.iter().enumerate().map(|(i, m)| {
        let start = i.saturating_sub(window - 1);
        let mean = metrics[start..=i].iter().map(|m| m.loss).sum::<f64>() / (i - start + 1) as f64;
        (m.step as f64, mean)
    });
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label(format!("moving average ({window} steps)"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    if !eval.is_empty() {
        let orange = RGBColor(230, 120, 20);
        chart
            .draw_series(LineSeries::new(eval.clone(), orange.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("validation loss")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
        let dots = eval.iter().map(|&p| Circle::new(p, 4, orange.filled()));
        chart.draw_series(dots).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_writes_a_png_and_metrics_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let metrics: Vec<StepMetrics> = (1..=30)
            .map(|step| StepMetrics {
                step,
                epoch: step as f64 / 30.0,
                lr: 1e-3,
                loss: 5.0 / step as f64,
                grad_norm: 1.0,
                clip_coef: 1.0,
                n_target_tokens: 10,
                tokens: 20,
                seconds: 0.1,
                tokens_per_second: 200.0,
                eval_loss: (step % 10 == 0).then(|| 6.0 / step as f64),
            })
            .collect();
        let jsonl = dir.path().join("metrics.jsonl");
        for m in &metrics {
            append(&jsonl, m).unwrap();
        }
        truncate_after(&jsonl, 20).unwrap();
        let back = read(&jsonl).unwrap();
        assert_eq!(back.len(), 20);
        assert_eq!(back[19].loss, metrics[19].loss);
        let png = dir.path().join("loss.png");
        plot_loss(&back, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Drawn aside: a plot that cannot be written leaves nothing behind.
        let nowhere = dir.path().join("missing").join("loss.png");
        assert!(plot_loss(&back, &nowhere).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "metrics.jsonl and loss.png only: {names:?}");

        // An append cut short (a full disk) once blocked every resume: the torn last line is
        // dropped, and the rewrite on resume leaves whole lines only.
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let torn = serde_json::to_string(&metrics[20]).unwrap();
        std::fs::write(&jsonl, format!("{text}{}", &torn[..torn.len() / 2])).unwrap();
        assert_eq!(read(&jsonl).unwrap().len(), 20);
        truncate_after(&jsonl, 15).unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        assert_eq!(text.lines().count(), 15);
        assert!(text.ends_with('\n'));
        // A bad line before the last is damage, not a torn append: an error naming it.
        std::fs::write(&jsonl, format!("{{\"step\": 1}}\n{text}")).unwrap();
        let err = format!("{:#}", read(&jsonl).unwrap_err());
        assert!(err.contains("metrics.jsonl: line 1"), "{err}");
    }
}
