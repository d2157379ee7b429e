//! The rendezvous: rank 0 accepts the other ranks' connections and greets each on a thread of
//! its own; the other ranks find rank 0 (retrying while it starts, and while DNS learns its
//! name). What a duplicate rank, a silent connection or another service on the port is told.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::{is_timeout, remaining};
use crate::wire::{read_msg, write_msg, Msg, VERSION};

/// How long rank 0 waits for a new connection's hello. A rank sends it as soon as it connects, so
/// this only bounds how long a silent connection (a port scan, a health check) keeps the thread
/// that greets it; greeting runs beside the accept loop, so it holds up no rank meanwhile.
const GREETING: Duration = Duration::from_secs(10);

/// How long a rank retries a MASTER_ADDR that does not resolve (cluster DNS may learn the master's
/// name a little after the job starts) before failing: a wrong name must not wait out the whole
/// timeout, or under `limo launch` rank 0 times out first and the cause is never shown.
pub(super) const RESOLVE_PATIENCE: Duration = Duration::from_secs(10);

/// A connection to rank 0's port, and what greeting it gave (see `greet`).
type Greeting = (SocketAddr, anyhow::Result<Option<(usize, TcpStream)>>);

/// A rank that said hello to rank 0, and where it connected from (to tell duplicates apart).
pub(super) struct Joined {
    pub(super) stream: TcpStream,
    pub(super) from: SocketAddr,
}

/// The rendezvous proper: accepts connections on `listener` (non-blocking), greets each on its
/// own thread (sending the outcome on `greeted`) and gathers the hellos from `greetings` until
/// every rank said one. An error is the reason, already sent to every rank that joined.
pub(super) fn rendezvous(
    listener: &TcpListener,
    world: usize,
    timeout: Duration,
    deadline: Instant,
    greeted: &Sender<Greeting>,
    greetings: &Receiver<Greeting>,
) -> Result<Vec<Joined>, String> {
    let mut joined: Vec<Option<Joined>> = (1..world).map(|_| None).collect();
    while joined.iter().any(Option::is_none) {
        let mut busy = false;
        match listener.accept() {
            Ok((stream, from)) => {
                busy = true;
                spawn_greeter(stream, from, world, deadline, greeted.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(abort_all(&mut joined, format!("rendezvous: accept: {e}"))),
        }
        while let Ok((from, greeting)) = greetings.try_recv() {
            busy = true;
            let (rank, mut stream) = match greeting {
                Ok(Some(hello)) => hello,
                // Not a limo peer (a port scan, a health check; `greet` logged it): keep waiting.
                Ok(None) => continue,
                Err(e) => return Err(abort_all(&mut joined, format!("rendezvous: {e}"))),
            };
            if let Some(first) = &joined[rank - 1] {
                let first = first.from;
                let _ = write_msg(&mut stream, &Msg::Abort(taken(rank, first)));
                return Err(abort_all(
                    &mut joined,
                    format!(
                        "two processes claim rank {rank} (connected from {first} and {from}): \
                         each process needs its own RANK"
                    ),
                ));
            }
            joined[rank - 1] = Some(Joined { stream, from });
        }
        if joined.iter().any(Option::is_none) && Instant::now() >= deadline {
            let missing: Vec<usize> = (1..world).filter(|&r| joined[r - 1].is_none()).collect();
            return Err(abort_all(
                &mut joined,
                format!(
                    "rendezvous timed out after {timeout:?} waiting for ranks {}",
                    crate::rank_list(&missing)
                ),
            ));
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(joined.into_iter().map(|j| j.expect("all joined")).collect())
}

/// What a process claiming `rank`, which the process connected from `owner` holds, is told.
pub(super) fn taken(rank: usize, owner: SocketAddr) -> String {
    format!(
        "rank {rank} is already taken by another process (connected from {owner}): each process \
         needs its own RANK"
    )
}

/// Greets `stream` (from `from`) on a thread of its own, so that a silent connection holds up
/// nobody; the outcome goes to `greeted`.
fn spawn_greeter(
    stream: TcpStream,
    from: SocketAddr,
    world: usize,
    deadline: Instant,
    greeted: Sender<Greeting>,
) {
    let spawned = std::thread::Builder::new()
        .name("limo-greet".into())
        .spawn(move || {
            let _ = greeted.send((from, greet(stream, from, world, deadline)));
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "rendezvous: dropped the connection from {from}: no thread to greet it: {e}"
        );
    }
}

/// Answers, once the rendezvous is over, the connections still queued on `listener` (at most
/// `world` of them: bounded if something floods the port) or still being greeted: a process
/// that claims a rank gets `answer(rank)` as an abort. Closes the listener and returns at once;
/// the answers go out from a thread.
pub(super) fn answer_latecomers(
    listener: TcpListener,
    world: usize,
    greeted: Sender<Greeting>,
    greetings: Receiver<Greeting>,
    answer: Box<dyn Fn(usize) -> String + Send>,
) {
    let deadline = Instant::now() + GREETING;
    for _ in 0..world {
        match listener.accept() {
            Ok((stream, from)) => spawn_greeter(stream, from, world, deadline, greeted.clone()),
            Err(_) => break,
        }
    }
    drop((listener, greeted));
    // Ends when the last greeter does (within GREETING).
    let _ = std::thread::Builder::new()
        .name("limo-latecomers".into())
        .spawn(move || {
            for (from, greeting) in greetings {
                if let Ok(Some((rank, mut stream))) = greeting {
                    let why = answer(rank);
                    tracing::warn!("rendezvous: refused rank {rank} connecting from {from}: {why}");
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = write_msg(&mut stream, &Msg::Abort(why));
                }
            }
        });
}

/// Reads the hello of a peer connected from `from`. `Ok(None)`: not a limo peer, ignored (and
/// logged); `Err`: a limo rank that cannot join (told why), which fails the rendezvous.
fn greet(
    mut stream: TcpStream,
    from: SocketAddr,
    world: usize,
    deadline: Instant,
) -> anyhow::Result<Option<(usize, TcpStream)>> {
    // A rank sends its hello right after connecting: a longer silence is no rank. The floor
    // leaves a rank that connects just before the deadline the time to be read.
    let wait = remaining(deadline)
        .min(GREETING)
        .max(Duration::from_millis(100));
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(Some(wait)));
    let hello = setup.and_then(|()| read_msg(&mut stream));
    let (version, rank, their_world) = match hello {
        Ok(Msg::Hello {
            version,
            rank,
            world,
        }) => (version, rank as usize, world as usize),
        Ok(_) => {
            tracing::warn!("rendezvous: ignored a connection from {from}: it sent no hello");
            return Ok(None);
        }
        Err(e) if is_timeout(&e) => {
            tracing::warn!(
                "rendezvous: ignored a connection from {from}: silent for {wait:?} (not a limo rank)"
            );
            return Ok(None);
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!("rendezvous: a connection from {from} closed without a hello");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!("rendezvous: ignored a connection from {from}: not a limo rank: {e}");
            return Ok(None);
        }
    };
    let refuse = |stream: &mut TcpStream, why: String| {
        let _ = write_msg(stream, &Msg::Abort(why.clone()));
        anyhow!(why)
    };
    if version != VERSION {
        return Err(refuse(
            &mut stream,
            format!("rank {rank} speaks protocol {version}, rank 0 {VERSION} (mixed limo builds?)"),
        ));
    }
    if their_world != world {
        return Err(refuse(
            &mut stream,
            format!("rank {rank} has WORLD_SIZE {their_world}, rank 0 {world}"),
        ));
    }
    if rank == 0 || rank >= world {
        return Err(refuse(
            &mut stream,
            format!("a peer claims rank {rank} in a group of {world}"),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(Some((rank, stream)))
}

/// Tells every connected peer why the rendezvous failed; returns `why`.
fn abort_all(joined: &mut [Option<Joined>], why: String) -> String {
    for j in joined.iter_mut().flatten() {
        let _ = write_msg(&mut j.stream, &Msg::Abort(why.clone()));
    }
    why
}

/// Connects to rank 0 at `addr:port`, retrying until `deadline` (rank 0 may start after us), but
/// failing once `addr` has not resolved for `resolve_patience`.
pub(super) fn connect_retrying(
    addr: &str,
    port: u16,
    deadline: Instant,
    timeout: Duration,
    resolve_patience: Duration,
) -> anyhow::Result<TcpStream> {
    let mut last_error = String::from("no address");
    let mut unresolved_since: Option<Instant> = None;
    loop {
        let mut pause = Duration::from_millis(50);
        match (strip_brackets(addr), port).to_socket_addrs() {
            Ok(addrs) => {
                unresolved_since = None;
                for a in addrs {
                    let attempt = remaining(deadline)
                        .clamp(Duration::from_millis(10), Duration::from_secs(2));
                    match TcpStream::connect_timeout(&a, attempt) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(s);
                        }
                        Err(e) => last_error = format!("{a}: {e}"),
                    }
                }
            }
            // DNS may not know the master yet when a cluster job starts: retry for a while, but
            // a name that stays unknown is a wrong MASTER_ADDR, not a late rank 0.
            Err(e) => {
                let since = *unresolved_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= resolve_patience {
                    bail!(
                        "cannot resolve MASTER_ADDR {addr} (retried for {}s): {e}; it must be \
                         the name or address of rank 0's machine, known to every node",
                        since.elapsed().as_secs()
                    );
                }
                last_error = format!("cannot resolve {addr}: {e}");
                // Spares the DNS server a query every 50 ms.
                pause = Duration::from_millis(500);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "rendezvous timed out after {timeout:?} waiting for ranks [0] \
                 (MASTER_ADDR {addr}, MASTER_PORT {port}; last error: {last_error})"
            );
        }
        std::thread::sleep(pause.min(remaining(deadline)));
    }
}

/// `host` without the brackets of the `[::1]` form of an IPv6 address (as in URLs).
fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `addr:port` as errors show it (`[::1]:29500` for IPv6).
pub(super) fn endpoint(addr: &str, port: u16) -> String {
    let host = strip_brackets(addr);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Loopback when the master is this machine's loopback name, every interface otherwise.
pub(super) fn bind_address(master_addr: &str, port: u16) -> SocketAddr {
    let master_addr = strip_brackets(master_addr);
    let local = matches!(master_addr, "localhost" | "127.0.0.1" | "::1");
    let v6 = master_addr.parse::<std::net::Ipv6Addr>().is_ok();
    let ip: std::net::IpAddr = match (local, v6) {
        (true, true) => std::net::Ipv6Addr::LOCALHOST.into(),
        (true, false) => std::net::Ipv4Addr::LOCALHOST.into(),
        (false, true) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        (false, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracketed_ipv6_master_addrs_are_taken_like_bare_ones() {
        let loopback: SocketAddr = "[::1]:29500".parse().unwrap();
        assert_eq!(bind_address("[::1]", 29500), loopback);
        assert_eq!(bind_address("::1", 29500), loopback);
        let any: SocketAddr = "[::]:29500".parse().unwrap();
        assert_eq!(bind_address("[2001:db8::7]", 29500), any);
        assert_eq!(bind_address("2001:db8::7", 29500), any);
        assert_eq!(
            bind_address("127.0.0.1", 29500),
            "127.0.0.1:29500".parse().unwrap()
        );
        assert_eq!(endpoint("[::1]", 7), "[::1]:7");
        assert_eq!(endpoint("::1", 7), "[::1]:7");
        assert_eq!(endpoint("node0", 7), "node0:7");
    }

    #[test]
    fn an_unresolvable_name_is_retried_for_the_patience_only() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let err = connect_retrying(
            "nosuchhost.invalid",
            29500,
            deadline,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(start.elapsed() < Duration::from_secs(20), "{err}");
        assert!(
            err.contains("cannot resolve MASTER_ADDR nosuchhost.invalid (retried for 1s)"),
            "{err}"
        );
    }
}
