//! Step metrics as TensorBoard event files (`output.report_to = ["tensorboard"]`), written by
//! rank 0 under `<output>/tensorboard/`.
//!
//! An event file is a sequence of TFRecords (u64 length LE, masked CRC-32C of the length, the
//! data, masked CRC-32C of the data) holding `Event` protobufs: first
//! `Event{wall_time, file_version: "brain.Event:2"}`, then one
//! `Event{wall_time, step, summary{value{tag, simple_value}}}` per scalar. The protobuf is
//! encoded by hand (Event: wall_time=1 double, step=2 int64, file_version=3 string, summary=5;
//! Summary: value=1 repeated; Summary.Value: tag=1 string, simple_value=2 float).
//!
//! Every run (and every resume) opens a new file; TensorBoard merges the files of a directory.
//! After a resume, steps between the checkpoint and the point where the earlier run stopped
//! appear in both files.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::metrics::StepMetrics;

/// The scalar tags of a step, in the order they are written (transformers' names where it has
/// them).
pub const TAGS: [&str; 6] = [
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/clip_coef",
    "train/tokens_per_second",
    "train/epoch",
];

/// Appends scalar events to one new event file, flushed after every call.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new `events.out.tfevents.<unix time>.<hostname>` in it (with a
    /// `.<n>` suffix if that name is taken), and writes the file-version event.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let now = now();
        let base = format!("events.out.tfevents.{}.{}", now as u64, hostname());
        let mut n = 0;
        let (file, path) = loop {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
            }
        };
        let mut writer = Self { file, path };
        let mut event = Vec::new();
        put_double(&mut event, 1, now);
        put_bytes(&mut event, 3, b"brain.Event:2");
        let mut buf = Vec::new();
        record(&mut buf, &event);
        writer.write(&buf)?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event per `(tag, value)` at `step`, then flushes.
    pub fn scalars(
        &mut self,
        step: u64,
        wall_time: f64,
        values: &[(&str, f64)],
    ) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for (tag, value) in values {
            let mut item = Vec::new();
            put_bytes(&mut item, 1, tag.as_bytes());
            put_key(&mut item, 2, 5);
            item.extend_from_slice(&(*value as f32).to_le_bytes());
            let mut summary = Vec::new();
            put_bytes(&mut summary, 1, &item);
            let mut event = Vec::new();
            put_double(&mut event, 1, wall_time);
            put_key(&mut event, 2, 0);
            put_varint(&mut event, step);
            put_bytes(&mut event, 5, &summary);
            record(&mut buf, &event);
        }
        self.write(&buf)
    }

    /// The scalars of one training step ([`TAGS`]), stamped now.
    pub fn step(&mut self, m: &StepMetrics) -> anyhow::Result<()> {
        let values = [
            m.loss,
            m.lr,
            m.grad_norm,
            m.clip_coef,
            m.tokens_per_second,
            m.epoch,
        ];
        let mut pairs: Vec<(&str, f64)> = TAGS.iter().copied().zip(values).collect();
        if let Some(loss) = m.eval_loss {
            pairs.push(("eval/loss", loss));
        }
        self.scalars(m.step as u64, now(), &pairs)
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("{}", self.path.display()))
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    // TFRecord's mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), table-driven.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        table
    });
    !data.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded event: wall time, step, file version, and its summary's (tag, value) pairs.
    #[derive(Debug, Default)]
    struct Event {
        wall_time: f64,
        step: Option<u64>,
        file_version: Option<String>,
        values: Vec<(String, f32)>,
    }

    enum Field<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Bytes(&'a [u8]),
        Fixed32([u8; 4]),
    }

    fn varint(data: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = data[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long");
    }

    fn fields(data: &[u8]) -> Vec<(u64, Field<'_>)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < data.len() {
            let key = varint(data, &mut pos);
            let field = match key & 7 {
                0 => Field::Varint(varint(data, &mut pos)),
                1 => {
                    pos += 8;
                    Field::Fixed64(data[pos - 8..pos].try_into().unwrap())
                }
                2 => {
                    let len = varint(data, &mut pos) as usize;
                    pos += len;
                    Field::Bytes(&data[pos - len..pos])
                }
                5 => {
                    pos += 4;
                    Field::Fixed32(data[pos - 4..pos].try_into().unwrap())
                }
                t => panic!("wire type {t}"),
            };
            out.push((key >> 3, field));
        }
        assert_eq!(pos, data.len());
        out
    }

    fn decode_event(data: &[u8]) -> Event {
        let mut event = Event::default();
        for (n, f) in fields(data) {
            match (n, f) {
                (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
                (2, Field::Varint(v)) => event.step = Some(v),
                (3, Field::Bytes(b)) => {
                    event.file_version = Some(String::from_utf8(b.to_vec()).unwrap())
                }
                (5, Field::Bytes(summary)) => {
                    for (n, f) in fields(summary) {
                        let (1, Field::Bytes(value)) = (n, f) else {
                            panic!("Summary field {n}")
                        };
                        let (mut tag, mut simple) = (None, None);
                        for (n, f) in fields(value) {
                            match (n, f) {
                                (1, Field::Bytes(b)) => {
                                    tag = Some(String::from_utf8(b.to_vec()).unwrap())
                                }
                                (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                                _ => panic!("Summary.Value field {n}"),
                            }
                        }
                        event.values.push((tag.unwrap(), simple.unwrap()));
                    }
                }
                _ => panic!("Event field {n}"),
            }
        }
        event
    }

    /// Reads an event file, checking the framing and both CRCs of every record.
    fn read_events(path: &Path) -> Vec<Event> {
        let bytes = std::fs::read(path).unwrap();
        let mut pos = 0;
        let mut events = Vec::new();
        while pos < bytes.len() {
            let len_bytes = &bytes[pos..pos + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(len_bytes), "length CRC at {pos}");
            let data = &bytes[pos + 12..pos + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc(data), "data CRC at {pos}");
            events.push(decode_event(data));
            pos += 16 + len;
        }
        events
    }

    fn event_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("events.out.tfevents.")
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn crc32c_matches_the_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720, B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        // ((0xe3069283 >> 15) | (0xe3069283 << 17)) + 0xa282ead8, computed in Python.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn writes_framed_events_that_decode() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        w.scalars(
            1,
            100.5,
            &[("train/loss", 2.5), ("train/learning_rate", 1e-3)],
        )
        .unwrap();
        w.scalars(300, 101.25, &[("train/loss", 2.0)]).unwrap();
        // Flushed after every call: readable while the writer is still open.
        let events = read_events(w.path());
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[0].step, None);
        assert!(events[0].values.is_empty());
        assert!(events[0].wall_time > 1.5e9);
        let scalars: Vec<(f64, u64, &str, f32)> = events[1..]
            .iter()
            .map(|e| {
                assert_eq!(e.values.len(), 1);
                (
                    e.wall_time,
                    e.step.unwrap(),
                    e.values[0].0.as_str(),
                    e.values[0].1,
                )
            })
            .collect();
        assert_eq!(
            scalars,
            [
                (100.5, 1, "train/loss", 2.5),
                (100.5, 1, "train/learning_rate", 1e-3),
                (101.25, 300, "train/loss", 2.0),
            ]
        );
        // A second writer in the same directory (a resume) opens its own file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert_ne!(w2.path(), w.path());
        assert_eq!(event_files(dir.path()).len(), 2);
    }

    #[test]
    fn a_short_run_writes_six_scalars_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let config = crate::TrainConfig::parse(
            crate::config::TINY_TOML,
            "tiny.toml",
            &[
                r#"output.report_to=["jsonl","tensorboard"]"#.to_string(),
                "train.max_steps=3".into(),
                "output.eval_examples=0".into(),
                "output.save_steps=1".into(),
                "output.export_dtype=\"none\"".into(),
                format!("output.dir={:?}", out.display().to_string()),
            ],
        )
        .unwrap();
        crate::train(&config, crate::RunOptions::default()).unwrap();

        let files = event_files(&out.join("tensorboard"));
        assert_eq!(files.len(), 1, "{files:?}");
        let events = read_events(&files[0]);
        assert_eq!(events.len(), 1 + 3 * 6);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let history = crate::metrics::read(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(history.len(), 3);
        for (i, m) in history.iter().enumerate() {
            let step_events = &events[1 + 6 * i..1 + 6 * (i + 1)];
            for (e, tag) in step_events.iter().zip(TAGS) {
                // Each tag by name, so that a value written under the wrong tag fails.
                let want = match tag {
                    "train/loss" => m.loss,
                    "train/learning_rate" => m.lr,
                    "train/grad_norm" => m.grad_norm,
                    "train/clip_coef" => m.clip_coef,
                    "train/tokens_per_second" => m.tokens_per_second,
                    "train/epoch" => m.epoch,
                    other => panic!("unexpected tag {other}"),
                };
                assert_eq!(e.step, Some(m.step as u64));
                assert_eq!(e.values, [(tag.to_string(), want as f32)]);
            }
        }

        // Resuming from step 2 opens a second file holding step 3 again.
        let step2 = out
            .join("checkpoints")
            .join(crate::checkpoint::step_dir_name(2));
        let options = crate::RunOptions {
            resume: Some(step2.display().to_string()),
            ..Default::default()
        };
        crate::train(&config, options).unwrap();
        let files = event_files(&out.join("tensorboard"));
        assert_eq!(files.len(), 2, "{files:?}");
        let steps: Vec<Option<u64>> = files
            .iter()
            .flat_map(|f| read_events(f))
            .filter(|e| e.file_version.is_none())
            .map(|e| e.step)
            .collect();
        assert_eq!(steps.len(), 4 * 6, "{steps:?}");
        assert!(steps[18..].iter().all(|&s| s == Some(3)), "{steps:?}");

        // A new run from step 0 (the tiny config overwrites) starts the event files afresh,
        // as metrics.jsonl.
        crate::train(&config, crate::RunOptions::default()).unwrap();
        let files = event_files(&out.join("tensorboard"));
        assert_eq!(files.len(), 1, "{files:?}");
    }
}
