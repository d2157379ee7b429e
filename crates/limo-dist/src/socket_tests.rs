//! Tests of `SocketComm` with threads standing in for processes (each rank has its own TCP
//! connection, exactly as across processes).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use crate::comm::{thread_group, Communicator};
use crate::socket::SocketComm;

/// Builds rank `rank` of a TCP group whose rank 0 listens on `listener`'s port.
fn make(
    listener: &TcpListener,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> anyhow::Result<SocketComm> {
    if rank == 0 {
        SocketComm::host(listener.try_clone()?, world, timeout)
    } else {
        let port = listener.local_addr()?.port();
        SocketComm::join("127.0.0.1", port, rank, world, timeout)
    }
}

/// Runs `f` on each of `ranks` (of a group of `world`) in threads; results by position.
fn on_ranks<T: Send + 'static>(
    world: usize,
    ranks: &[usize],
    timeout: Duration,
    f: impl Fn(anyhow::Result<SocketComm>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let f = Arc::new(f);
    let handles: Vec<_> = ranks
        .iter()
        .map(|&rank| {
            let (f, listener) = (f.clone(), listener.clone());
            std::thread::spawn(move || f(make(&listener, rank, world, timeout)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Deterministic values spanning many magnitudes and signs, so that the order of summation
/// shows in the rounding of every dtype.
fn values(rank: usize, salt: usize, n: usize) -> Vec<f64> {
    let mut x = (rank * 7919 + salt * 104729 + 1) as u64;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            unit * 10f64.powi(((x >> 3) % 9) as i32 - 4)
        })
        .collect()
}

/// A fixed program of collectives; every output as (dtype, f64 bit patterns).
fn program(c: &dyn Communicator) -> Vec<(DType, Vec<u64>)> {
    let world = c.world_size();
    let mut out = Vec::new();
    for (salt, dtype) in [DType::F32, DType::BF16, DType::F64, DType::F16]
        .into_iter()
        .enumerate()
    {
        let n = 6 * world;
        let t = Tensor::new(values(c.rank(), salt, n), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let results = [
            c.all_reduce(&t).unwrap(),
            c.reduce_scatter(&t).unwrap(),
            c.all_gather(&t).unwrap(),
            c.broadcast(&t, world - 1).unwrap(),
        ];
        c.barrier().unwrap();
        for r in results {
            assert_eq!(r.dtype(), dtype);
            let bits = r
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .into_iter()
                .map(f64::to_bits)
                .collect();
            out.push((dtype, bits));
        }
    }
    out
}

#[test]
fn results_are_bit_identical_to_thread_comm() {
    for world in 1..=4 {
        let ranks: Vec<usize> = (0..world).collect();
        let socket = on_ranks(world, &ranks, Duration::from_secs(20), |c| {
            program(&c.unwrap())
        });
        let threads: Vec<_> = thread_group(world, Duration::from_secs(20))
            .into_iter()
            .map(|c| std::thread::spawn(move || program(&c)))
            .collect();
        for (rank, t) in threads.into_iter().enumerate() {
            assert_eq!(socket[rank], t.join().unwrap(), "world {world} rank {rank}");
        }
        // The test has teeth: summing in another order changes some bits.
        if world >= 3 {
            let v: Vec<Vec<f64>> = (0..world).map(|r| values(r, 0, 6 * world)).collect();
            let forward: Vec<f64> = (0..v[0].len())
                .map(|i| v.iter().fold(0.0, |s, x| s + x[i]))
                .collect();
            let backward: Vec<f64> = (0..v[0].len())
                .map(|i| v.iter().rev().fold(0.0, |s, x| s + x[i]))
                .collect();
            assert_ne!(forward, backward);
        }
    }
}

#[test]
fn a_dead_peer_is_named_promptly() {
    // Rank 2 leaves after one collective (its socket closes, as when its process dies).
    let start = Instant::now();
    let errors = on_ranks(3, &[0, 1, 2], Duration::from_secs(30), |c| {
        let c = c.unwrap();
        let t = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        c.all_reduce(&t).unwrap();
        if c.rank() == 2 {
            return None;
        }
        let err = c.all_reduce(&t).unwrap_err().to_string();
        // Once broken, the communicator keeps failing with the same story.
        let again = c.barrier().unwrap_err().to_string();
        Some((err, again))
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for (err, again) in errors.into_iter().flatten() {
        assert!(err.contains("rank 2 closed its connection"), "{err}");
        assert!(again.contains("rank 2 closed its connection"), "{again}");
    }
}

#[test]
fn a_dead_rank_0_is_named_promptly() {
    let start = Instant::now();
    let errors = on_ranks(3, &[0, 1, 2], Duration::from_secs(30), |c| {
        let c = c.unwrap();
        c.barrier().unwrap();
        if c.rank() == 0 {
            return None;
        }
        Some(c.barrier().unwrap_err().to_string())
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for err in errors.into_iter().flatten() {
        assert!(err.contains("rank 0 closed its connection"), "{err}");
    }
}

#[test]
fn a_rank_that_never_comes_is_named_after_the_timeout() {
    let timeout = Duration::from_millis(500);
    let start = Instant::now();
    let errors = on_ranks(4, &[0, 2], timeout, |c| match c {
        Ok(_) => panic!("the rendezvous cannot complete without ranks 1 and 3"),
        Err(e) => e.to_string(),
    });
    let took = start.elapsed();
    assert!(took >= timeout && took < timeout * 4, "{took:?}");
    assert!(
        errors[0].contains("rendezvous timed out after 500ms waiting for ranks [1, 3]"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("[1, 3]"), "{}", errors[1]);
    // No rank 0 at all (nothing listens on the port): the error names it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let err = SocketComm::join("127.0.0.1", port, 1, 2, timeout)
        .err()
        .unwrap()
        .to_string();
    assert!(start.elapsed() < timeout * 4, "{:?}", start.elapsed());
    assert!(
        err.contains("timed out after 500ms waiting for ranks [0]"),
        "{err}"
    );
}

#[test]
fn a_rank_that_stops_calling_collectives_is_named_after_the_timeout() {
    let timeout = Duration::from_millis(400);
    let errors = on_ranks(3, &[0, 1, 2], timeout, move |c| {
        let c = c.unwrap();
        if c.rank() == 1 {
            // Alive but stuck: stays connected past everyone's timeout.
            std::thread::sleep(timeout * 4);
            return None;
        }
        let start = Instant::now();
        let err = c.barrier().unwrap_err().to_string();
        Some((err, start.elapsed()))
    });
    for (err, took) in errors.into_iter().flatten() {
        assert!(
            err.contains("barrier #1 timed out after 400ms waiting for ranks [1]"),
            "{err}"
        );
        assert!(took < timeout * 3, "{took:?}");
    }
}

#[test]
fn mismatches_between_ranks_are_errors_on_every_rank() {
    let errors = on_ranks(2, &[0, 1], Duration::from_secs(10), |c| {
        let c = c.unwrap();
        let t = Tensor::zeros(c.rank() + 1, DType::F32, &Device::Cpu).unwrap();
        c.all_reduce(&t).unwrap_err().to_string()
    });
    for e in &errors {
        assert!(e.contains("rank 1 contributed 2 values, rank 0 1"), "{e}");
    }
    let errors = on_ranks(2, &[0, 1], Duration::from_secs(10), |c| {
        let c = c.unwrap();
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let a = c.reduce_scatter(&t).unwrap_err().to_string();
        (a, c.barrier().is_err())
    });
    for (e, broken) in &errors {
        assert!(e.contains("3 values do not split over 2 ranks"), "{e}");
        assert!(broken);
    }
    let errors = on_ranks(2, &[0, 1], Duration::from_secs(10), |c| {
        let c = c.unwrap();
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        if c.rank() == 0 {
            c.all_reduce(&t).unwrap_err().to_string()
        } else {
            c.all_gather(&t).unwrap_err().to_string()
        }
    });
    for e in &errors {
        assert!(e.contains("ranks disagree on the collective"), "{e}");
    }
}

#[test]
fn a_stray_connection_does_not_disturb_the_rendezvous() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stray = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    });
    stray.join().unwrap();
    let peer = std::thread::spawn(move || {
        let c = SocketComm::join("127.0.0.1", port, 1, 2, Duration::from_secs(10)).unwrap();
        c.all_gather(&Tensor::new(&[2f32], &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    });
    let c = SocketComm::host(listener, 2, Duration::from_secs(10)).unwrap();
    let mine = c
        .all_gather(&Tensor::new(&[1f32], &Device::Cpu).unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(mine, vec![1., 2.]);
    assert_eq!(peer.join().unwrap(), vec![1., 2.]);
}
