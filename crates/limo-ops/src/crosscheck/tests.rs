//! Tests of the crosscheck engine on the CPU (the CPU against itself, and the comparison).

use super::*;

#[test]
fn the_cpu_agrees_with_itself_on_every_check() {
    let opts = Options {
        large: false,
        ..Options::default()
    };
    let checks = crosscheck(&Device::Cpu, &Device::Cpu, &opts).unwrap();
    let ops: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.op.as_str()).collect();
    assert_eq!(ops.len(), 15, "{ops:?}");
    for dtype in [DType::F32, DType::BF16] {
        assert!(checks.iter().filter(|c| c.dtype == dtype).count() >= 40);
    }
    for c in &checks {
        assert!(c.finite && c.rel_error == 0.0, "{c:?}");
    }
}

#[test]
fn a_wrong_result_fails_its_check() {
    let a = random(&[10], 1, 1.0).unwrap();
    let (err, finite) = rel_l2(&(&a * 1.001).unwrap(), &a).unwrap();
    assert!(finite && err > 5e-4 && err < 2e-3);
    let nan = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
    let (_, finite) = rel_l2(&nan, &a.narrow(0, 0, 2).unwrap()).unwrap();
    assert!(!finite);
    let check = |rel_error, finite| Check {
        op: "x".into(),
        shape: "".into(),
        dtype: DType::F32,
        output: "".into(),
        rel_error,
        finite,
        tolerance: tolerance(DType::F32),
    };
    assert!(check(5e-5, true).passed());
    assert!(!check(2e-4, true).passed());
    assert!(!check(0.0, false).passed());
    // A shape mismatch is a failure, not a comparison of flattened values.
    let mut seen = 0;
    let (err, finite) = {
        let mut c = Checks {
            out: Vec::new(),
            each: &mut |_| seen += 1,
        };
        let t = a.reshape((2, 5)).unwrap();
        c.push(
            "x",
            "".into(),
            DType::F32,
            1.0,
            vec![("o", t.clone(), t.t().unwrap())],
        )
        .unwrap();
        (c.out[0].rel_error, c.out[0].finite)
    };
    assert!(!finite && err.is_infinite());
    assert_eq!(seen, 1, "each check is handed on as it is made");
}

#[test]
fn packed_documents_cover_the_tokens() {
    assert_eq!(packed(10, &[4, 1]), vec![0, 4, 5, 9, 10]);
    assert_eq!(positions(&[0, 2, 5]), vec![0, 1, 0, 1, 2]);
}
