//! The byte format of the TCP backend (`socket.rs`): length-prefixed frames, little-endian.
//!
//! ```text
//! frame    = u64 body length, body
//! body     = u8 tag, fields
//! Hello        tag 1: b"LIMOCOMM", u32 version, u32 rank, u32 world
//! Welcome      tag 2
//! Abort        tag 3: string (why rank 0 gave up the rendezvous)
//! Contribution tag 4: u64 seq, u8 op, u32 root, string dtype, payload
//! Result       tag 5: u64 seq, payload
//! Failure      tag 6: string (why the collective failed, the same text on every rank)
//! string   = u32 length, UTF-8 bytes
//! payload  = u8 kind (0 f32, 1 f64), u64 count, count values
//! ```
//!
//! Values travel as f32 when that is exact (f32, bf16, f16 and u8 tensors) and as f64
//! otherwise, so a run sends half the bytes without changing a single bit of the results.

use std::io::{self, Read, Write};

use candle_core::{DType, Device, Tensor};

const MAGIC: &[u8; 8] = b"LIMOCOMM";
/// Bumped whenever the format changes, so mixed limo builds refuse each other at rendezvous.
pub const VERSION: u32 = 1;
/// Frames are bounded so a stray connection cannot make a rank allocate without limit.
const MAX_FRAME: u64 = 1 << 40;

/// A collective, as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AllGather,
    ReduceScatter,
    AllReduce,
    Broadcast,
    Barrier,
}

impl Op {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> io::Result<Op> {
        Ok(match c {
            0 => Op::AllGather,
            1 => Op::ReduceScatter,
            2 => Op::AllReduce,
            3 => Op::Broadcast,
            4 => Op::Barrier,
            _ => return Err(invalid(format!("unknown collective code {c}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllReduce => "all_reduce",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
        }
    }
}

/// Tensor values on the wire: f32 when the tensor's dtype embeds exactly in f32.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[allow(clippy::len_without_is_empty)] // a payload is never asked whether it is empty
impl Payload {
    /// The values of `t` (flattened), in the narrowest exact wire type.
    pub fn from_tensor(t: &Tensor) -> anyhow::Result<Payload> {
        let flat = t.flatten_all()?;
        Ok(if fits_f32(t.dtype()) {
            Payload::F32(flat.to_dtype(DType::F32)?.to_vec1()?)
        } else {
            Payload::F64(flat.to_dtype(DType::F64)?.to_vec1()?)
        })
    }

    /// `values` cast to `dtype` exactly as `Tensor::to_dtype` from f64 does, then put on the wire.
    pub fn from_f64(values: Vec<f64>, dtype: DType) -> anyhow::Result<Payload> {
        let n = values.len();
        let t = Tensor::from_vec(values, n, &Device::Cpu)?.to_dtype(dtype)?;
        Payload::from_tensor(&t)
    }

    pub fn len(&self) -> usize {
        match self {
            Payload::F32(v) => v.len(),
            Payload::F64(v) => v.len(),
        }
    }

    pub fn into_f64(self) -> Vec<f64> {
        match self {
            Payload::F32(v) => v.into_iter().map(f64::from).collect(),
            Payload::F64(v) => v,
        }
    }

    /// A 1-D CPU tensor of the wire values (to be cast to the caller's dtype and device).
    pub fn into_tensor(self) -> anyhow::Result<Tensor> {
        let n = self.len();
        Ok(match self {
            Payload::F32(v) => Tensor::from_vec(v, n, &Device::Cpu)?,
            Payload::F64(v) => Tensor::from_vec(v, n, &Device::Cpu)?,
        })
    }
}

/// Whether every value of `dtype` is exactly an f32.
fn fits_f32(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16 | DType::U8)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Msg {
    Hello {
        version: u32,
        rank: u32,
        world: u32,
    },
    Welcome,
    Abort(String),
    Contribution {
        seq: u64,
        op: Op,
        root: u32,
        dtype: String,
        payload: Payload,
    },
    Result {
        seq: u64,
        payload: Payload,
    },
    Failure(String),
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub fn write_msg(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    let mut b = Vec::new();
    match msg {
        Msg::Hello {
            version,
            rank,
            world,
        } => {
            b.push(1);
            b.extend_from_slice(MAGIC);
            for x in [version, rank, world] {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        Msg::Welcome => b.push(2),
        Msg::Abort(s) => {
            b.push(3);
            put_str(&mut b, s);
        }
        Msg::Contribution {
            seq,
            op,
            root,
            dtype,
            payload,
        } => {
            b.push(4);
            b.extend_from_slice(&seq.to_le_bytes());
            b.push(op.code());
            b.extend_from_slice(&root.to_le_bytes());
            put_str(&mut b, dtype);
            put_payload(&mut b, payload);
        }
        Msg::Result { seq, payload } => {
            b.push(5);
            b.extend_from_slice(&seq.to_le_bytes());
            put_payload(&mut b, payload);
        }
        Msg::Failure(s) => {
            b.push(6);
            put_str(&mut b, s);
        }
    }
    w.write_all(&(b.len() as u64).to_le_bytes())?;
    w.write_all(&b)?;
    w.flush()
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_payload(b: &mut Vec<u8>, p: &Payload) {
    match p {
        Payload::F32(v) => {
            b.push(0);
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            b.reserve(v.len() * 4);
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        Payload::F64(v) => {
            b.push(1);
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            b.reserve(v.len() * 8);
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

/// Reads one frame. A clean end of stream before the frame is `UnexpectedEof`, like one inside it.
pub fn read_msg(r: &mut impl Read) -> io::Result<Msg> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head);
    if len == 0 || len > MAX_FRAME {
        // Another protocol's bytes read as a length: showing them names the other service
        // (`HTTP/1.1`, `SSH-2.0-`) where the number alone said nothing.
        return Err(invalid(format!(
            "bad frame length {len}, not limo's protocol (it starts with \"{}\")",
            head.escape_ascii()
        )));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    parse(&body)
}

/// A cursor over a frame body whose reads fail (instead of panicking) past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("truncated frame".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| invalid("string not UTF-8".into()))
    }

    fn payload(&mut self) -> io::Result<Payload> {
        let kind = self.u8()?;
        let n = usize::try_from(self.u64()?).map_err(|_| invalid("payload too long".into()))?;
        let width = match kind {
            0 => 4,
            1 => 8,
            _ => return Err(invalid(format!("unknown payload kind {kind}"))),
        };
        let bytes = self.take(
            n.checked_mul(width)
                .ok_or_else(|| invalid("payload too long".into()))?,
        )?;
        Ok(if kind == 0 {
            Payload::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            )
        } else {
            Payload::F64(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
        })
    }
}

fn parse(body: &[u8]) -> io::Result<Msg> {
    let mut c = Cursor(body);
    let msg = match c.u8()? {
        1 => {
            if c.take(MAGIC.len())? != MAGIC {
                return Err(invalid("not a limo peer (bad magic)".into()));
            }
            Msg::Hello {
                version: c.u32()?,
                rank: c.u32()?,
                world: c.u32()?,
            }
        }
        2 => Msg::Welcome,
        3 => Msg::Abort(c.string()?),
        4 => Msg::Contribution {
            seq: c.u64()?,
            op: Op::from_code(c.u8()?)?,
            root: c.u32()?,
            dtype: c.string()?,
            payload: c.payload()?,
        },
        5 => Msg::Result {
            seq: c.u64()?,
            payload: c.payload()?,
        },
        6 => Msg::Failure(c.string()?),
        t => return Err(invalid(format!("unknown message tag {t}"))),
    };
    if !c.0.is_empty() {
        return Err(invalid("trailing bytes in frame".into()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Msg) {
        let mut buf = Vec::new();
        write_msg(&mut buf, &m).unwrap();
        assert_eq!(read_msg(&mut buf.as_slice()).unwrap(), m);
        // Every strict prefix of a frame is an error, never a panic or a different message.
        for cut in 0..buf.len() {
            assert!(read_msg(&mut &buf[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn messages_round_trip_and_truncation_is_an_error() {
        round_trip(Msg::Hello {
            version: VERSION,
            rank: 3,
            world: 4,
        });
        round_trip(Msg::Welcome);
        round_trip(Msg::Abort("rank 2 is missing".into()));
        round_trip(Msg::Contribution {
            seq: 7,
            op: Op::ReduceScatter,
            root: 0,
            dtype: "bf16".into(),
            payload: Payload::F32(vec![1.5, -0.0, f32::MIN_POSITIVE]),
        });
        round_trip(Msg::Result {
            seq: u64::MAX,
            payload: Payload::F64(vec![1e300, -0.0, f64::MIN_POSITIVE / 3.0, 0.1]),
        });
        round_trip(Msg::Failure("x".into()));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut frame = 9u64.to_le_bytes().to_vec();
        frame.extend_from_slice(&[1, b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1']);
        let err = read_msg(&mut frame.as_slice()).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        let huge = u64::MAX.to_le_bytes();
        assert!(read_msg(&mut huge.as_slice()).is_err());
        // Another service's answer: its first bytes, read as a length, are named.
        let http = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let err = read_msg(&mut http.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("bad frame length 3543824036068086856, not limo's protocol (it starts with \"HTTP/1.1\")"),
            "{err}"
        );
    }
}
