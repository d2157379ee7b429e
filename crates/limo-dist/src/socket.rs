//! The CPU backend across processes (and machines): ranks talk over TCP in a star through rank
//! 0, which gathers every contribution, computes the result exactly as `ThreadComm` does (values
//! as f64, summed in rank order 0..N-1 starting from rank 0's values, cast back to each rank's
//! dtype) and sends each rank its part. Results are therefore bit-identical to `ThreadComm`'s.
//!
//! Failure behaviour: every wait has a timeout whose error names the ranks that never arrived; a
//! peer whose connection closes or resets (its process died) is noticed at once, and rank 0 tells
//! every other rank which one it was, so the whole group stops promptly with the same story.
//! After a failure the communicator is broken: later collectives fail with the first error.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor};

use crate::comm::Communicator;
use crate::wire::{read_msg, write_msg, Msg, Op, Payload, VERSION};

mod rendezvous;
use rendezvous::{
    answer_latecomers, bind_address, connect_retrying, endpoint, rendezvous, taken,
    RESOLVE_PATIENCE,
};

/// How much longer than rank 0 the other ranks wait, so that rank 0's error (which names the
/// missing ranks) reaches them before their own, vaguer timeout fires.
const GRACE: Duration = Duration::from_secs(2);

/// One rank of a TCP group. Rank 0 hosts; see the module comment.
pub struct SocketComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    role: Role,
    /// Number of collectives started, so that ranks cannot silently fall out of step.
    seq: u64,
    /// The error that broke the group, repeated by every later collective.
    broken: Option<String>,
}

enum Role {
    Host {
        /// `peers[r - 1]` is rank r's connection (written by the collective's caller).
        peers: Vec<TcpStream>,
        /// Every message from every peer, read by one thread per peer; an `Err` is a lost peer.
        inbox: Receiver<(usize, io::Result<Msg>)>,
    },
    Worker {
        stream: TcpStream,
    },
}

impl SocketComm {
    /// Rank 0 of a group of `world`: accepts the other ranks on `listener` until all have said
    /// hello or `timeout` passed (the error then names the missing ranks, and the ranks that did
    /// connect are told the same).
    pub fn host(listener: TcpListener, world: usize, timeout: Duration) -> anyhow::Result<Self> {
        if world == 0 {
            bail!("world size must be at least 1");
        }
        let deadline = Instant::now() + timeout;
        listener
            .set_nonblocking(true)
            .context("rendezvous: listener")?;
        let (greeted, greetings) = mpsc::channel();
        let outcome = rendezvous(&listener, world, timeout, deadline, &greeted, &greetings);
        // Whoever is still queued or being greeted came too late: tell them why rather than
        // leave them a reset connection (a second process claiming a taken rank, typically).
        let answer: Box<dyn Fn(usize) -> String + Send> = match &outcome {
            Ok(joined) => {
                let owners: Vec<SocketAddr> = joined.iter().map(|j| j.from).collect();
                Box::new(move |rank| taken(rank, owners[rank - 1]))
            }
            Err(why) => {
                let why = why.clone();
                Box::new(move |_| why.clone())
            }
        };
        answer_latecomers(listener, world, greeted, greetings, answer);
        let mut peers: Vec<TcpStream> = outcome
            .map_err(|why| anyhow!("rank 0: {why}"))?
            .into_iter()
            .map(|j| j.stream)
            .collect();
        let (tx, inbox) = mpsc::channel();
        for (i, peer) in peers.iter_mut().enumerate() {
            write_msg(peer, &Msg::Welcome)
                .with_context(|| format!("rendezvous: rank {} left before it completed", i + 1))?;
            spawn_reader(i + 1, peer.try_clone()?, tx.clone());
        }
        Ok(Self::new(0, world, timeout, Role::Host { peers, inbox }))
    }

    /// Rank `rank` (> 0) of a group of `world`: connects to rank 0 at `addr:port`, retrying
    /// until it answers (it may start later than us) or `timeout` passed.
    pub fn join(
        addr: &str,
        port: u16,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if rank == 0 || rank >= world {
            bail!("rank {rank} cannot join a group of {world} (rank 0 hosts)");
        }
        let deadline = Instant::now() + timeout;
        let mut stream = connect_retrying(addr, port, deadline, timeout, RESOLVE_PATIENCE)?;
        let hello = Msg::Hello {
            version: VERSION,
            rank: rank as u32,
            world: world as u32,
        };
        write_msg(&mut stream, &hello).context("rendezvous: sending hello to rank 0")?;
        stream.set_read_timeout(Some(remaining(deadline) + GRACE))?;
        match read_msg(&mut stream) {
            Ok(Msg::Welcome) => {}
            Ok(Msg::Abort(why)) => bail!("rank {rank}: rank 0 gave up the rendezvous: {why}"),
            Ok(other) => bail!("rendezvous: unexpected message from rank 0: {other:?}"),
            Err(e) if is_timeout(&e) => bail!(
                "rank {rank}: rendezvous timed out after {timeout:?} waiting for ranks [0] \
                 (connected, but rank 0 never confirmed that all ranks joined)"
            ),
            // Not a frame of ours: whatever listens there is no limo rank 0.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => bail!(
                "rank {rank}: MASTER_ADDR:MASTER_PORT ({}) answered with something that is not \
                 limo's rendezvous (is another service on that port?): {e}",
                endpoint(addr, port)
            ),
            Err(e) => bail!("rank {rank}: {}", lost(0, &e, "the rendezvous")),
        }
        Ok(Self::new(rank, world, timeout, Role::Worker { stream }))
    }

    /// Host or join as `env` says: rank 0 listens on `master_port` (on loopback when the master
    /// address is local, on every interface otherwise, so other machines can reach it).
    pub fn connect(env: &crate::env::DistEnv, timeout: Duration) -> anyhow::Result<Self> {
        if env.rank == 0 {
            let bind = bind_address(&env.master_addr, env.master_port);
            let listener = TcpListener::bind(bind).with_context(|| {
                format!("rank 0: cannot listen on {bind} (MASTER_PORT in use?)")
            })?;
            Self::host(listener, env.world_size, timeout)
        } else {
            Self::join(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                timeout,
            )
        }
    }

    fn new(rank: usize, world: usize, timeout: Duration, role: Role) -> Self {
        SocketComm {
            rank,
            world,
            timeout,
            state: Mutex::new(State {
                role,
                seq: 0,
                broken: None,
            }),
        }
    }

    /// Runs one collective: `input` is this rank's contribution; returns this rank's result
    /// as a 1-D tensor of `input`'s dtype and device.
    fn collective(&self, op: Op, root: usize, input: &Tensor) -> anyhow::Result<Tensor> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow!("communicator poisoned by a panic"))?;
        if let Some(why) = &st.broken {
            bail!(
                "rank {}: communicator unusable after an earlier failure: {why}",
                self.rank
            );
        }
        st.seq += 1;
        let seq = st.seq;
        let dtype = input.dtype();
        // Only the root's values matter to a broadcast: the others send none.
        let payload = if op == Op::Broadcast && self.rank != root {
            Payload::F64(Vec::new())
        } else {
            Payload::from_tensor(input)?
        };
        let call = Call {
            seq,
            op,
            root,
            dtype,
        };
        let result = match &mut st.role {
            Role::Host { peers, inbox } => self.host_collective(peers, inbox, call, payload),
            Role::Worker { stream } => self.worker_collective(stream, call, payload),
        };
        match result {
            Ok(values) => Ok(values
                .into_tensor()?
                .to_dtype(dtype)?
                .to_device(input.device())?),
            Err(why) => {
                st.broken = Some(why.clone());
                Err(anyhow!("rank {}: {why}", self.rank))
            }
        }
    }

    fn host_collective(
        &self,
        peers: &mut [TcpStream],
        inbox: &Receiver<(usize, io::Result<Msg>)>,
        call: Call,
        mine: Payload,
    ) -> Result<Payload, String> {
        let Call {
            seq,
            op,
            root,
            dtype,
        } = call;
        let what = call.what();
        let mut got: Vec<Option<Contribution>> = (0..self.world).map(|_| None).collect();
        got[0] = Some(Contribution {
            op,
            root,
            dtype,
            values: mine.into_f64(),
        });
        let deadline = Instant::now() + self.timeout;
        while got.iter().any(Option::is_none) {
            let (rank, msg) = match inbox.recv_timeout(remaining(deadline)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    let missing: Vec<usize> =
                        (0..self.world).filter(|&r| got[r].is_none()).collect();
                    return Err(fail_all(
                        peers,
                        format!(
                            "{what} timed out after {:?} waiting for ranks {}",
                            self.timeout,
                            crate::rank_list(&missing)
                        ),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(fail_all(peers, format!("{what}: every peer is gone")))
                }
            };
            let contribution = match msg {
                Ok(Msg::Contribution {
                    seq: s,
                    op,
                    root,
                    dtype,
                    payload,
                }) if s == seq => dtype
                    .parse::<DType>()
                    .map(|dtype| Contribution {
                        op,
                        root: root as usize,
                        dtype,
                        values: payload.into_f64(),
                    })
                    .map_err(|_| format!("rank {rank} sent unknown dtype {dtype:?}")),
                Ok(Msg::Contribution { seq: s, .. }) => Err(format!(
                    "rank {rank} is at collective #{s}, rank 0 at #{seq}: ranks out of step"
                )),
                Ok(other) => Err(format!("rank {rank} sent an unexpected {other:?}")),
                Err(e) => Err(lost(rank, &e, &what)),
            };
            match contribution {
                Ok(c) if got[rank].is_none() => got[rank] = Some(c),
                Ok(_) => {
                    return Err(fail_all(
                        peers,
                        format!("rank {rank} sent two contributions to {what}"),
                    ))
                }
                Err(why) => return Err(fail_all(peers, why)),
            }
        }
        let all: Vec<Contribution> = got.into_iter().map(|c| c.expect("all arrived")).collect();
        let results = match compute(&all, self.world) {
            Ok(r) => r,
            Err(why) => return Err(fail_all(peers, format!("{what}: {why}"))),
        };
        let mut results = results.into_iter();
        let own = results.next().expect("rank 0's result");
        for ((i, peer), values) in peers.iter_mut().enumerate().zip(results) {
            let rank = i + 1;
            let sent = Payload::from_f64(values, all[rank].dtype)
                .map_err(|e| format!("{what}: result for rank {rank}: {e}"))
                .and_then(|payload| {
                    write_msg(peer, &Msg::Result { seq, payload })
                        .map_err(|e| lost(rank, &e, &what))
                });
            if let Err(why) = sent {
                return Err(fail_all(peers, why));
            }
        }
        // Own result: the same f64 values, cast to our dtype by the caller.
        Ok(Payload::F64(own))
    }

    fn worker_collective(
        &self,
        stream: &mut TcpStream,
        call: Call,
        payload: Payload,
    ) -> Result<Payload, String> {
        let what = call.what();
        let msg = Msg::Contribution {
            seq: call.seq,
            op: call.op,
            root: call.root as u32,
            dtype: call.dtype.as_str().to_string(),
            payload,
        };
        write_msg(stream, &msg).map_err(|e| lost(0, &e, &what))?;
        let wait = self.timeout + GRACE;
        stream
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        match read_msg(stream) {
            Ok(Msg::Result { seq: s, payload }) if s == call.seq => Ok(payload),
            Ok(Msg::Failure(why)) => Err(why),
            Ok(other) => Err(format!("{what}: unexpected message from rank 0: {other:?}")),
            Err(e) if is_timeout(&e) => Err(format!(
                "{what} timed out after {:?} waiting for rank 0",
                self.timeout
            )),
            Err(e) => Err(lost(0, &e, &what)),
        }
    }
}

/// One collective as this rank calls it: the communicator's `seq`-th.
#[derive(Clone, Copy)]
struct Call {
    seq: u64,
    op: Op,
    root: usize,
    dtype: DType,
}

impl Call {
    /// How errors name the collective: its op and number.
    fn what(&self) -> String {
        format!("{} #{}", self.op.name(), self.seq)
    }
}

/// One rank's part of a collective, as rank 0 sees it.
struct Contribution {
    op: Op,
    root: usize,
    dtype: DType,
    values: Vec<f64>,
}

/// Every rank's result (in f64, by rank) of a collective whose contributions are `all`, with
/// `ThreadComm`'s arithmetic: sums start from rank 0's values and add ranks 1, 2, .. in order.
fn compute(all: &[Contribution], world: usize) -> Result<Vec<Vec<f64>>, String> {
    let (op, root) = (all[0].op, all[0].root);
    if let Some((r, c)) = all
        .iter()
        .enumerate()
        .find(|(_, c)| c.op != op || c.root != root)
    {
        return Err(format!(
            "ranks disagree on the collective: rank 0 called {} (root {root}), rank {r} {} (root {})",
            op.name(),
            c.op.name(),
            c.root
        ));
    }
    let len = all[0].values.len();
    if op != Op::Broadcast {
        if let Some(r) = all.iter().position(|c| c.values.len() != len) {
            return Err(format!(
                "rank {r} contributed {} values, rank 0 {len}",
                all[r].values.len()
            ));
        }
    }
    Ok(match op {
        Op::Barrier => vec![Vec::new(); world],
        Op::AllGather => {
            let gathered: Vec<f64> = all.iter().flat_map(|c| c.values.iter().copied()).collect();
            vec![gathered; world]
        }
        Op::Broadcast => {
            let values = &all
                .get(root)
                .ok_or_else(|| format!("broadcast: no rank {root} in a group of {world}"))?
                .values;
            vec![values.clone(); world]
        }
        Op::AllReduce => vec![sum_in_rank_order(all); world],
        Op::ReduceScatter => {
            if !len.is_multiple_of(world) {
                return Err(format!("{len} values do not split over {world} ranks"));
            }
            let sum = sum_in_rank_order(all);
            let chunk = len / world;
            (0..world)
                .map(|r| sum[r * chunk..(r + 1) * chunk].to_vec())
                .collect()
        }
    })
}

fn sum_in_rank_order(all: &[Contribution]) -> Vec<f64> {
    let mut sum = all[0].values.clone();
    for c in &all[1..] {
        sum.iter_mut().zip(&c.values).for_each(|(s, x)| *s += x);
    }
    sum
}

/// Tells every peer why the collective failed (peers that are gone are skipped); returns `why`.
fn fail_all(peers: &mut [TcpStream], why: String) -> String {
    for p in peers.iter_mut() {
        // A short write timeout: a peer that stopped reading must not stall the failure path.
        let _ = p.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = write_msg(p, &Msg::Failure(why.clone()));
    }
    why
}

/// Reads `rank`'s messages into the host's inbox until its connection ends.
fn spawn_reader(rank: usize, mut stream: TcpStream, tx: Sender<(usize, io::Result<Msg>)>) {
    std::thread::Builder::new()
        .name(format!("limo-comm-rank{rank}"))
        .spawn(move || loop {
            let msg = read_msg(&mut stream);
            let stop = msg.is_err();
            if tx.send((rank, msg)).is_err() || stop {
                break;
            }
        })
        .expect("spawning a reader thread");
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The error for a peer whose connection failed: closed or reset means its process is gone.
fn lost(rank: usize, e: &io::Error, during: &str) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => {
            format!("rank {rank} closed its connection during {during} (did its process die?)")
        }
        _ => format!("connection to rank {rank} failed during {during}: {e}"),
    }
}

impl Drop for SocketComm {
    fn drop(&mut self) {
        // Peers see the connection close. The host closes only its sending side: its reader
        // threads keep draining what peers still send until they close theirs. Closing with
        // unread bytes would reset the connection, and a reset discards the failure message
        // still unread at a peer, which then blamed rank 0 instead of the rank that died.
        if let Ok(st) = self.state.get_mut() {
            match &st.role {
                Role::Host { peers, .. } => peers.iter().for_each(|p| {
                    let _ = p.shutdown(Shutdown::Write);
                }),
                Role::Worker { stream } => {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

impl Communicator for SocketComm {
    crate::rank_world_fields!();

    fn all_gather(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.collective(Op::AllGather, 0, input)
    }

    fn reduce_scatter(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.collective(Op::ReduceScatter, 0, input)
    }

    fn all_reduce(&self, input: &Tensor) -> anyhow::Result<Tensor> {
        self.collective(Op::AllReduce, 0, input)
    }

    fn broadcast(&self, input: &Tensor, root: usize) -> anyhow::Result<Tensor> {
        self.collective(Op::Broadcast, root, input)
    }

    fn barrier(&self) -> anyhow::Result<()> {
        let empty = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
        self.collective(Op::Barrier, 0, &empty).map(|_| ())
    }
}
