//! The grader against hand-labelled pairs built on real reference answers of all nine
//! benchmarks (`fixtures/grader_pairs.jsonl`: `prediction`, `reference`, `equivalent`, `note`),
//! the benchmark loader, `grade_pairs`, and a small fuzz for panics.

use std::path::Path;

use limo_eval::benchmarks::{self, RowsAs, NAMES};
use limo_eval::grader::{extract_answer, extract_or_raw, grade_pairs, is_equivalent, normalize};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/grader_pairs.jsonl");

fn pairs() -> Vec<(String, String, bool, String)> {
    FIXTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("fixture line {}: {e}", i + 1));
            let s = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| panic!("fixture line {}: {k}", i + 1))
                    .to_string()
            };
            let eq = v["equivalent"]
                .as_bool()
                .unwrap_or_else(|| panic!("fixture line {}: equivalent", i + 1));
            (s("prediction"), s("reference"), eq, s("note"))
        })
        .collect()
}

#[test]
fn labelled_pairs() {
    let pairs = pairs();
    let equivalent = pairs.iter().filter(|p| p.2).count();
    let not = pairs.len() - equivalent;
    assert!(pairs.len() >= 150, "{} pairs", pairs.len());
    for name in NAMES {
        assert!(
            pairs.iter().any(|p| p.3.starts_with(&format!("{name}:"))),
            "no pair for {name}"
        );
    }
    let mut failures = Vec::new();
    for (i, (pred, reference, want, note)) in pairs.iter().enumerate() {
        let extracted = extract_or_raw(pred);
        let got = is_equivalent(&extracted, reference);
        if got != *want {
            failures.push(format!(
                "line {}: {note}: is_equivalent({extracted:?}, {reference:?}) = {got}, want {want} \
                 (normalized {:?} vs {:?})",
                i + 1,
                normalize(&extracted),
                normalize(reference)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} pairs wrong:\n{}",
        failures.len(),
        pairs.len(),
        failures.join("\n")
    );
    assert!(
        equivalent.abs_diff(not) * 10 <= pairs.len(),
        "unbalanced fixture: {equivalent} equivalent, {not} not"
    );
}

#[test]
fn every_reference_matches_itself_boxed() {
    for name in NAMES {
        for p in benchmarks::load(name).unwrap() {
            let response = format!("Reasoning...\nSo the result is $\\boxed{{{}}}$.", p.answer);
            assert!(
                is_equivalent(&extract_or_raw(&response), &p.answer),
                "{name} {}: {:?}",
                p.id,
                p.answer
            );
        }
    }
}

#[test]
fn load_all_nine() {
    let expected = [
        ("aime", 30),
        ("amc23", 40),
        ("cn_math_2024", 30),
        ("gaokao", 79),
        ("grade_school_math", 210),
        ("kaoyan", 199),
        ("math500", 500),
        ("minerva", 272),
        ("olympiadbench", 675),
    ];
    for (name, rows) in expected {
        let (problems, skipped) = benchmarks::load_counted(name).unwrap();
        // no shipped row lacks a reference answer
        assert_eq!(skipped, 0, "{name}");
        assert_eq!(problems.len(), rows, "{name}");
        for p in &problems {
            assert_eq!(p.benchmark, name);
            assert!(
                !p.question.trim().is_empty(),
                "{name} {}: empty question",
                p.id
            );
            assert!(!p.answer.trim().is_empty(), "{name} {}: empty answer", p.id);
            assert!(!p.id.is_empty());
        }
        let ids: std::collections::BTreeSet<&str> =
            problems.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids.len(), problems.len(), "{name}: ids not unique");
    }
    assert_eq!(NAMES.len(), expected.len());
    // field mapping spot checks
    let amc = benchmarks::load("amc23").unwrap();
    assert_eq!(amc[0].answer, "27");
    let gaokao = benchmarks::load("gaokao").unwrap();
    assert_eq!(gaokao[0].answer, "C");
    assert_eq!(gaokao[0].id, "0");
    assert_eq!(gaokao[9].answer, "(4,0)");
    let gsm = benchmarks::load("grade_school_math").unwrap();
    assert_eq!(gsm[44].answer, "3568, 5880, 6512, 864");
    assert_eq!(gsm[91].answer, "42, 84");
    assert_eq!(gsm[3].id, "3");
    let math = benchmarks::load("math500").unwrap();
    assert_eq!(math[0].id, "test/precalculus/807.json");
    assert!(math[0].question.starts_with("Convert the point"));
    assert_eq!(benchmarks::load("math").unwrap().len(), 500);
    let err = benchmarks::load("gsm8k").unwrap_err().to_string();
    assert!(
        err.contains("gsm8k") && err.contains("olympiadbench") && err.contains("math500"),
        "{err}"
    );
}

/// Rows whose question and answer are the fields "q" and "a".
const Q_A: RowsAs = RowsAs::Fields {
    question: "q",
    answer: "a",
};

#[test]
fn load_user_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.jsonl");
    std::fs::write(&path, "{\"q\": \"1+1?\", \"a\": 2.0, \"k\": 7}\n\n{\"q\": \"2+2?\", \"a\": \"4\", \"k\": \"x\"}\n").unwrap();
    let ps = benchmarks::load_file(&path, Q_A, Some("k")).unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(
        (
            ps[0].id.as_str(),
            ps[0].answer.as_str(),
            ps[0].benchmark.as_str()
        ),
        ("7", "2", "mine")
    );
    assert_eq!(ps[1].id, "x");
    let ps = benchmarks::load_file(&path, Q_A, None).unwrap();
    assert_eq!(ps[1].id, "1");

    let cases = [
        (
            "{\"q\": \"x\", \"a\": \"\"}\n",
            "line 1",
            "no reference answer",
        ),
        (
            "{\"q\": \"x\", \"a\": \"1\"}\n{\"q\": \"y\"}\n",
            "line 2",
            "\"a\"",
        ),
        (
            "{\"q\": \"x\", \"a\": \"1\"}\nnot json\n",
            "line 2",
            "not a JSON object",
        ),
        ("{\"q\": \"\", \"a\": \"1\"}\n", "line 1", "empty question"),
        (
            "{\"q\": \"x\", \"a\": null}\n",
            "line 1",
            "no reference answer",
        ),
    ];
    for (text, line, what) in cases {
        std::fs::write(&path, text).unwrap();
        let err = benchmarks::load_file(&path, Q_A, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mine.jsonl") && err.contains(line) && err.contains(what),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

/// Once read with `read_to_string`: "stream did not contain valid UTF-8", no line.
#[test]
fn a_user_file_that_is_not_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.jsonl");
    let mut bytes = b"{\"q\": \"1+1?\", \"a\": \"2\"}\n{\"q\": \"x".to_vec();
    bytes.extend(b"\xff\", \"a\": \"1\"}\n");
    std::fs::write(&path, &bytes).unwrap();
    let err = benchmarks::load_file(&path, Q_A, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mine.jsonl: line 2: not valid UTF-8 (invalid byte at column 9)"),
        "{err}"
    );
}

/// Once `--out` = `--pairs` truncated the pairs before reading them: "0 of 0 correct".
#[test]
fn grading_into_the_pairs_file_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p.jsonl");
    let text = "{\"prediction\": \"1\", \"reference\": \"1\"}\n";
    std::fs::write(&input, text).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let spellings = [
        input.clone(),
        dir.path().join(".").join("p.jsonl"),
        dir.path().join("sub/../p.jsonl"),
        link,
    ];
    for output in spellings {
        let err = grade_pairs(&input, &output).unwrap_err().to_string();
        assert!(err.contains("the output is the pairs file"), "{err}");
        assert_eq!(std::fs::read_to_string(&input).unwrap(), text, "{output:?}");
    }
    assert_eq!(
        grade_pairs(&input, &dir.path().join("g.jsonl")).unwrap(),
        (1, 1)
    );
}

/// Once "line 1: not a JSON object" (`limo eval --data` and `limo data stats` take the mark).
#[test]
fn pairs_may_start_with_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p.jsonl");
    std::fs::write(
        &input,
        "\u{feff}{\"prediction\": \"\\\\boxed{2}\", \"reference\": \"2\"}\n",
    )
    .unwrap();
    assert_eq!(
        grade_pairs(&input, &dir.path().join("g.jsonl")).unwrap(),
        (1, 1)
    );
}

#[test]
fn grade_pairs_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "{\"prediction\": \"so \\\\boxed{\\\\frac{1}{2}}\", \"reference\": \"0.5\", \"id\": 1}\n\
         \n\
         {\"prediction\": \"7\", \"reference\": 8}\n\
         {\"prediction\": \"The answer is 27.\", \"reference\": 27.0}\n",
    )
    .unwrap();
    assert_eq!(grade_pairs(&input, &output).unwrap(), (2, 3));
    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["extracted"], "\\frac{1}{2}");
    assert_eq!(lines[0]["correct"], true);
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines[1]["correct"], false);
    assert_eq!(lines[2]["extracted"], "27");
    assert_eq!(lines[2]["correct"], true);

    std::fs::write(
        &input,
        "{\"prediction\": \"1\", \"reference\": \"1\"}\n{\"prediction\": \"1\"}\n",
    )
    .unwrap();
    let err = grade_pairs(&input, &output).unwrap_err().to_string();
    assert!(
        err.contains("pairs.jsonl") && err.contains("line 2") && err.contains("reference"),
        "{err}"
    );
    std::fs::write(&input, "[1]\n").unwrap();
    let err = grade_pairs(&input, &output).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    let missing = grade_pairs(Path::new("/nonexistent/p.jsonl"), &output)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/p.jsonl"), "{missing}");
}

#[test]
fn extraction_on_responses() {
    let r = "Let $x = \\frac{a}{b}$ with $\\boxed{2}$ as a guess.\n\nActually:\n$$\\boxed{\\left\\{1, \\frac{\\sqrt{5}}{2}\\right\\}}$$";
    assert_eq!(
        extract_answer(r).as_deref(),
        Some("\\left\\{1, \\frac{\\sqrt{5}}{2}\\right\\}")
    );
    assert!(is_equivalent(
        &extract_or_raw(r),
        "\\{\\frac{\\sqrt5}{2}, 1\\}"
    ));
    assert_eq!(
        extract_answer("**Final Answer**\n\\[\n\\boxed{\n42\n}\n\\]").as_deref(),
        Some("42")
    );
    assert_eq!(extract_answer("nothing to see"), None);
    assert_eq!(extract_or_raw("  17  "), "17");
}

/// Random strings of LaTeX-ish pieces: nothing panics, overflows the stack or hangs.
#[test]
fn fuzz_never_panics() {
    let pieces = [
        "\\boxed{",
        "\\fbox",
        "{",
        "}",
        "\\frac",
        "\\dfrac",
        "\\sqrt",
        "[",
        "]",
        "(",
        ")",
        "^",
        "_",
        "\\",
        "\\\\",
        "$",
        ",",
        ".",
        "=",
        "-",
        "+",
        "*",
        "/",
        "%",
        "\\%",
        "!",
        "1",
        "2",
        "0",
        "9",
        "e",
        "x",
        "i",
        "A",
        "C",
        "\\pi",
        "\\infty",
        "\\cup",
        "\\pm",
        "\\left(",
        "\\right]",
        "\\text{",
        "\\mbox{ cm}",
        " ",
        "\n",
        "π",
        "。",
        "中",
        "或",
        "°",
        "^\\circ",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "&",
        "\\sin",
        "\\log_",
        "\\lfloor",
        "\\binom",
        "1,000",
        "the answer is",
        "m",
        "\\mid",
        "\\in",
        "\\!",
        "~",
        ":",
        "(C)",
        "e-5",
        "\\,",
        "√",
        "∞",
    ];
    let mut rng = StdRng::seed_from_u64(16);
    for _ in 0..3000 {
        let n = rng.random_range(0..40);
        let a: String = (0..n)
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let m = rng.random_range(0..40);
        let b: String = (0..m)
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect();
        let _ = extract_answer(&a);
        let _ = normalize(&a);
        let _ = is_equivalent(&a, &b);
        let _ = is_equivalent(&a, &a);
        let _ = is_equivalent(&extract_or_raw(&b), &a);
    }
    // arbitrary characters
    for _ in 0..2000 {
        let n = rng.random_range(0..60);
        let s: String = (0..n)
            .map(|_| char::from_u32(rng.random_range(0..0x3100)).unwrap_or('?'))
            .collect();
        let _ = extract_answer(&s);
        let _ = is_equivalent(&s, "1");
        let _ = is_equivalent("(1,2)", &s);
    }
    // deep nesting and long inputs
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(!is_equivalent(&deep, "2"));
    let deep = format!("{}1{}", "\\frac{".repeat(3000), "}{2}".repeat(3000));
    let _ = is_equivalent(&deep, "0");
    let deep = "\\sqrt".repeat(3000) + "2";
    let _ = is_equivalent(&deep, "1");
    let long = "1+".repeat(20000) + "1";
    let _ = is_equivalent(&long, "20001");
    let commas = "1,".repeat(5000) + "1";
    let _ = is_equivalent(&commas, &commas.replace("1,1", "1,2"));
    let _ = extract_answer(&"\\boxed{".repeat(10000));
}

/// A failed grading (a full disk, a bad line) once left the output cut off where it stopped.
#[test]
fn a_failed_grading_leaves_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pairs.jsonl");
    let output = dir.path().join("graded.jsonl");
    let good = "{\"prediction\": \"\\\\boxed{2}\", \"reference\": \"2\"}\n";
    // More than a write buffer of good lines, then a bad one.
    std::fs::write(&input, good.repeat(2000) + "{\"prediction\": \"2\"}\n").unwrap();
    std::fs::write(&output, "old\n").unwrap();
    let err = format!("{:#}", grade_pairs(&input, &output).unwrap_err());
    assert!(err.contains("line 2001: no \"reference\""), "{err}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "old\n");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["graded.jsonl", "pairs.jsonl"], "no temporary file");

    // A device is written straight, its errors named: /dev/full fails as a full disk does.
    std::fs::write(&input, good.repeat(2000)).unwrap();
    if Path::new("/dev/full").exists() {
        let err = format!(
            "{:#}",
            grade_pairs(&input, Path::new("/dev/full")).unwrap_err()
        );
        assert!(err.starts_with("/dev/full: cannot write: "), "{err}");
        assert!(!Path::new("/dev/full.tmp").exists());
    }
    // A path inside a file: named as the output that cannot be created.
    let inside = input.join("graded.jsonl");
    let err = format!("{:#}", grade_pairs(&input, &inside).unwrap_err());
    assert!(
        err.starts_with(&format!("{}: cannot create", inside.display())),
        "{err}"
    );
    assert_eq!(grade_pairs(&input, &output).unwrap(), (2000, 2000));
    assert_eq!(
        std::fs::read_to_string(&output).unwrap().lines().count(),
        2000
    );
}
