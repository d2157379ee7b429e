//! The TCP rendezvous (`SocketComm::host` / `join`) facing what real clusters put on or behind
//! MASTER_ADDR:MASTER_PORT: silent connections, other services, duplicate ranks, bad host names.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use limo_dist::comm::Communicator;
use limo_dist::SocketComm;

/// Long enough that waiting it out fails every timing assertion below.
const TIMEOUT: Duration = Duration::from_secs(30);

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().unwrap().port()
}

#[test]
fn a_silent_connection_does_not_hold_up_the_real_ranks() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = port_of(&listener);
    let start = Instant::now();
    let host = thread::spawn(move || SocketComm::host(listener, 2, TIMEOUT));
    // Connects first and says nothing for the whole test, like a port scanner or a health check.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    thread::sleep(Duration::from_millis(300));
    let worker = thread::spawn(move || SocketComm::join("127.0.0.1", port, 1, 2, TIMEOUT));
    let host = host.join().unwrap().expect("rank 0");
    let worker = worker.join().unwrap().expect("rank 1");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "rendezvous took {took:?}");
    // The group works.
    let t = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    let w = thread::spawn(move || worker.all_reduce(&t).unwrap().to_vec1::<f32>().unwrap());
    let t = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        host.all_reduce(&t).unwrap().to_vec1::<f32>().unwrap(),
        [2.; 3]
    );
    assert_eq!(w.join().unwrap(), [2.; 3]);
    drop(silent);
}

#[test]
fn another_service_on_the_master_port_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = port_of(&listener);
    // An HTTP server: reads the request, answers 400 and closes.
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Drain until the client hangs up, so that closing cannot reset the connection.
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let start = Instant::now();
    let err = SocketComm::join("127.0.0.1", port, 1, 2, TIMEOUT)
        .err()
        .expect("not a rank 0")
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&format!("MASTER_ADDR:MASTER_PORT (127.0.0.1:{port}) answered with something that is not limo's rendezvous")),
        "{err}"
    );
    assert!(err.contains("is another service on that port?"), "{err}");
    server.join().unwrap();
}

#[test]
fn two_processes_claiming_one_rank_are_both_told() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = port_of(&listener);
    let start = Instant::now();
    let host = thread::spawn(move || SocketComm::host(listener, 3, TIMEOUT).err());
    // Rank 2 never comes, so both rank 1s reach rank 0 before the group could complete.
    let claimants: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || SocketComm::join("127.0.0.1", port, 1, 3, TIMEOUT).err()))
        .collect();
    let host = host.join().unwrap().expect("rank 0 must fail").to_string();
    let claimants: Vec<String> = claimants
        .into_iter()
        .map(|c| c.join().unwrap().expect("a claimant must fail").to_string())
        .collect();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(host.contains("two processes claim rank 1"), "{host}");
    assert!(
        host.contains("each process needs its own RANK"),
        "{host}\n{claimants:?}"
    );
    // The second claimant learns why (it was left with a closed connection); so does the first.
    let taken = claimants
        .iter()
        .filter(|e| {
            e.contains("rank 1 is already taken by another process (connected from 127.0.0.1:")
        })
        .count();
    assert_eq!(taken, 1, "{claimants:?}");
    for e in &claimants {
        assert!(e.contains("each process needs its own RANK"), "{e}");
    }
}

#[test]
fn an_unresolvable_master_addr_fails_fast_naming_it() {
    let start = Instant::now();
    let err = SocketComm::join("nosuchhost.invalid", 29500, 1, 2, Duration::from_secs(120))
        .err()
        .expect("nothing to join")
        .to_string();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(40), "took {took:?}: {err}");
    assert!(
        err.contains("cannot resolve MASTER_ADDR nosuchhost.invalid"),
        "{err}"
    );
}

#[test]
fn a_bracketed_ipv6_master_addr_is_joined() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    let port = port_of(&listener);
    let host = thread::spawn(move || SocketComm::host(listener, 2, Duration::from_secs(10)));
    let worker = SocketComm::join("[::1]", port, 1, 2, Duration::from_secs(10));
    let host = host.join().unwrap();
    worker.expect("rank 1 joins [::1]");
    host.expect("rank 0");
}
