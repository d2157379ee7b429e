//! Arithmetic word problems in the LIMO format (question, step-by-step solution ending in
//! `\boxed{answer}`, answer), generated deterministically from a seed. They give the embedded
//! default run something to learn with no download, and held-out problems to grade.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

pub const TRAIN_PROBLEMS: usize = 2000;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub question: String,
    pub solution: String,
    pub answer: String,
}

const NAMES: [&str; 8] = [
    "Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana",
];
const THINGS: [&str; 8] = [
    "apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards",
];

/// `count` problems; the same seed gives the same problems. Held-out sets use another seed.
pub fn problems(seed: u64, count: usize) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_A817);
    (0..count).map(|_| problem(&mut rng)).collect()
}

fn problem(rng: &mut StdRng) -> Problem {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let thing = THINGS[rng.random_range(0..THINGS.len())];
    let a: i64 = rng.random_range(2..60);
    let b: i64 = rng.random_range(2..40);
    let (question, steps, answer) = match rng.random_range(0..3) {
        0 => (
            format!(
                "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
            ),
            format!(
                "{name} starts with {a} {thing}.\nGetting {b} more means adding: {a} + {b} = {}.",
                a + b
            ),
            a + b,
        ),
        1 => {
            let (big, small) = (a.max(b), a.min(b));
            (
                format!("{name} has {big} {thing} and gives away {small}. How many {thing} are left?"),
                format!("{name} starts with {big} {thing}.\nGiving away {small} means subtracting: {big} - {small} = {}.", big - small),
                big - small,
            )
        }
        _ => {
            let boxes = a % 9 + 2;
            let each = b % 12 + 2;
            (
                format!("{name} has {boxes} boxes with {each} {thing} in each. How many {thing} are there in total?"),
                format!("There are {boxes} boxes of {each} {thing}.\nThe total is a product: {boxes} * {each} = {}.", boxes * each),
                boxes * each,
            )
        }
    };
    Problem {
        question,
        solution: format!("{steps}\nThe answer is \\boxed{{{answer}}}."),
        answer: answer.to_string(),
    }
}

pub fn write_jsonl(path: &Path, problems: &[Problem]) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
    );
    for p in problems {
        writeln!(file, "{}", serde_json::to_string(p)?)?;
    }
    file.flush()?;
    Ok(())
}

/// The content of the last `\boxed{...}` in `text` (braces may nest), if any.
pub fn boxed_answer(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_deterministic_and_self_consistent() {
        let a = problems(1, 50);
        let b = problems(1, 50);
        let c = problems(2, 50);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
        for p in &a {
            assert_eq!(
                boxed_answer(&p.solution).as_deref(),
                Some(p.answer.as_str()),
                "{p:?}"
            );
            // The arithmetic in the solution is right.
            let line = p.solution.lines().nth(1).unwrap();
            let expr = line.split(": ").nth(1).unwrap().trim_end_matches('.');
            let (lhs, rhs) = expr.split_once(" = ").unwrap();
            let parts: Vec<&str> = lhs.split(' ').collect();
            let (x, op, y): (i64, &str, i64) = (
                parts[0].parse().unwrap(),
                parts[1],
                parts[2].parse().unwrap(),
            );
            let value = match op {
                "+" => x + y,
                "-" => x - y,
                _ => x * y,
            };
            assert_eq!(value.to_string(), rhs);
        }
    }

    #[test]
    fn boxed_answers_are_extracted() {
        assert_eq!(boxed_answer("so \\boxed{42}.").as_deref(), Some("42"));
        assert_eq!(
            boxed_answer("\\boxed{1} then \\boxed{\\frac{1}{2}}").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(boxed_answer("no box"), None);
        assert_eq!(boxed_answer("\\boxed{open"), None);
    }
}
