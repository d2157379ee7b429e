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
        detail: None,
        error: None,
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
            dump: None,
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

#[test]
fn every_group_can_run_alone() {
    let mut ops_seen = std::collections::BTreeSet::new();
    for group in GROUPS {
        let opts = Options {
            dtypes: vec![DType::F32],
            large: false,
            only: vec![group.to_string()],
            ..Options::default()
        };
        let checks = crosscheck(&Device::Cpu, &Device::Cpu, &opts).unwrap();
        let ops: std::collections::BTreeSet<String> = checks.iter().map(|c| c.op.clone()).collect();
        if group == "attention_16k" {
            // GPU against GPU only (sm90 against sm80): nothing to run on the CPU.
            assert!(ops.is_empty(), "{ops:?}");
            continue;
        }
        assert!(!ops.is_empty(), "{group} ran nothing");
        assert!(
            ops.is_disjoint(&ops_seen),
            "{group}: {ops:?} ran in another group too"
        );
        ops_seen.extend(ops);
    }
    assert_eq!(ops_seen.len(), 15, "{ops_seen:?}");
    let opts = Options {
        only: vec!["attention".into(), "norms".into()],
        ..Options::default()
    };
    let err = crosscheck(&Device::Cpu, &Device::Cpu, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no group of checks \"norms\" (groups: attention, "),
        "{err}"
    );
}

#[test]
fn failed_outputs_are_located_and_dumped_within_the_budget() {
    let dir = std::env::temp_dir().join(format!("limo-dump-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let to = DumpTo {
        dir: dir.clone(),
        budget_bytes: 3 * 64 * 4 * 2, // three 64-element f32 pairs
    };
    let r = random(&[8, 8], 3, 1.0).unwrap();
    let wrong = r.t().unwrap().contiguous().unwrap(); // a transposed layout
    let mut details = Vec::new();
    for round in 0..2 {
        let mut c = Checks {
            out: Vec::new(),
            each: &mut |check: &Check| details.push(check.detail.clone()),
            dump: Some(autopsy::Dump::create(&to, 7).unwrap()),
        };
        let outputs = vec![
            ("good", r.clone(), r.clone()),
            ("bad", r.clone(), wrong.clone()),
            ("short", r.clone(), r.narrow(0, 0, 4).unwrap()),
        ];
        c.push("op (x)", "8x8".into(), DType::F32, 1e-4, outputs)
            .unwrap();
        if round == 0 {
            c.push(
                "op (x)",
                "8x8".into(),
                DType::F32,
                1e-4,
                vec![("again", r.clone(), wrong.clone())],
            )
            .unwrap();
        }
    }
    // Only failed outputs get a line under their row; the wrong layout is located.
    assert_eq!(details.len(), 7);
    assert!(details[0].is_none() && details[4].is_none());
    let bad = details[1].as_deref().unwrap();
    assert!(
        bad.starts_with("56 of 64 elements") && bad.contains("axis 0 of 8: all"),
        "{bad}"
    );
    assert!(details[2]
        .as_deref()
        .unwrap()
        .starts_with("dims [4, 8] against"));
    // Index lines for every failure of both runs (appended); files while the budget lasted
    // (each run has its own budget).
    let index = std::fs::read_to_string(dir.join("index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files: Vec<Option<&str>> = lines.iter().map(|l| l["file"].as_str()).collect();
    assert_eq!(
        files,
        [
            Some("000-op-x-bad-f32.safetensors"),
            None,
            Some("002-op-x-again-f32.safetensors"),
            Some("003-op-x-bad-f32.safetensors"),
            None,
        ]
    );
    assert_eq!(lines[1]["skipped"], "the dims differ");
    assert_eq!(lines[3]["seed"], 7);
    assert_eq!(lines[0]["where"].as_str(), details[1].as_deref());
    let saved = candle_core::safetensors::load(dir.join(files[0].unwrap()), &Device::Cpu).unwrap();
    let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(
        diff(&saved["reference"], &r).to_scalar::<f32>().unwrap(),
        0.0
    );
    assert_eq!(
        diff(&saved["result"], &wrong).to_scalar::<f32>().unwrap(),
        0.0
    );
    // bf16 results (the GPU's) are written in bf16.
    let mut c = Checks {
        out: Vec::new(),
        each: &mut |_| {},
        dump: Some(autopsy::Dump::create(&to, 7).unwrap()),
    };
    let (rb, wb) = (
        r.to_dtype(DType::BF16).unwrap(),
        wrong.to_dtype(DType::BF16).unwrap(),
    );
    c.push(
        "half",
        "8x8".into(),
        DType::BF16,
        1e-2,
        vec![("o", rb, wb.clone())],
    )
    .unwrap();
    let saved =
        candle_core::safetensors::load(dir.join("005-half-o-bf16.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(saved["result"].dtype(), DType::BF16);
    assert_eq!(
        saved["result"].to_vec2::<half::bf16>().unwrap(),
        wb.to_vec2::<half::bf16>().unwrap()
    );
    // Over the budget: the line says so and no file is written.
    let to = DumpTo {
        budget_bytes: 100,
        ..to
    };
    let mut c = Checks {
        out: Vec::new(),
        each: &mut |_| {},
        dump: Some(autopsy::Dump::create(&to, 7).unwrap()),
    };
    c.push(
        "big",
        "8x8".into(),
        DType::F32,
        1e-4,
        vec![("o", r.clone(), wrong)],
    )
    .unwrap();
    let last = std::fs::read_to_string(dir.join("index.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(last["file"], serde_json::Value::Null);
    assert_eq!(last["skipped"], "512 bytes, 100 left of the budget");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        5,
        "index and four files"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_group_that_errors_is_a_failed_row_and_the_next_group_runs() {
    fn fails(_: &mut Checks, _: Run, _: DType) -> Result<()> {
        candle_core::bail!("launch refused: too many resources requested\nstack backtrace: ...")
    }
    let opts = Options {
        large: false,
        ..Options::default()
    };
    let mut rows = Vec::new();
    let mut checks = Checks {
        out: Vec::new(),
        each: &mut |c: &Check| rows.push(c.op.clone()),
        dump: None,
    };
    let run = Run(&Device::Cpu, &Device::Cpu, &opts);
    run_groups(
        &mut checks,
        run,
        &[("broken", fails), ("embedding", embedding)],
    );
    let out = checks.out;
    let stopped: Vec<&Check> = out.iter().filter(|c| c.error.is_some()).collect();
    assert_eq!(stopped.len(), 2, "once per dtype: {stopped:?}");
    for (c, dtype) in stopped.iter().zip([DType::F32, DType::BF16]) {
        assert_eq!((c.op.as_str(), c.dtype), ("broken", dtype));
        assert_eq!(c.shape, "(stopped by an error)");
        assert!(!c.passed());
        let error = c.error.as_deref().unwrap();
        assert_eq!(error, "launch refused: too many resources requested");
    }
    // The group after each failure ran, in both dtypes.
    let embedding: Vec<&Check> = out
        .iter()
        .filter(|c| c.op == "embedding_backward")
        .collect();
    assert!(embedding.len() >= 4 && embedding.iter().all(|c| c.passed()));
    assert_eq!(rows.len(), out.len(), "every row is handed on");
}
