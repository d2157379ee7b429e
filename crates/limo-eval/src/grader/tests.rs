use super::*;

#[test]
fn extract_nested_last_fbox_and_none() {
    for (text, want) in [
        ("so \\boxed{\\frac{1}{2}}.", Some("\\frac{1}{2}")),
        ("\\boxed{\\{1,\\{2\\}\\}} x", Some("\\{1,\\{2\\}\\}")),
        ("\\boxed{a_{b^{c}}}", Some("a_{b^{c}}")),
        ("first \\boxed{1} then \\boxed{2}", Some("2")),
        ("\\boxed{3} and \\fbox{4}", Some("4")),
        ("$\\boxed 5$", Some("5")),
        ("\\boxed{7.}", Some("7")),
        ("The answer is $\\frac{3}{4}$.", Some("\\frac{3}{4}")),
        (
            "Final Answer: The final answer is 12. I hope it is correct.",
            Some("12"),
        ),
        ("final answer: 3.5", Some("3.5")),
        ("所以答案是 6。", Some("6")),
        ("no answer here", None),
        ("\\boxed{}", None),
        ("\\boxed{1", Some("1")),
    ] {
        assert_eq!(extract_answer(text).as_deref(), want, "{text}");
    }
}

#[test]
fn normalize_forms() {
    let cases = [
        ("$\\dfrac{3}{4}$", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac 59", "\\frac{5}{9}"),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("45°", "45"),
        ("10,\\!080", "10080"),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
        ("1,000", "1000"),
        ("1,00", "1,00"),
        ("x = 5", "5"),
        ("\\text{Evelyn}", "Evelyn"),
        ("5.4 \\text{ cents}", "5.4"),
        ("864 \\mbox{ inches}^2", "864"),
        ("15\\mbox{ cm}^2", "15"),
        ("\\$32,\\!348", "32348"),
        ("62.5\\%", "62.5%"),
        (".0000672", "0.0000672"),
        ("3.00", "3"),
        ("11\\sqrt2", "11\\sqrt{2}"),
        ("2 \\cdot 3", "2*3"),
        ("2\\times 10^{5}", "2*10^{5}"),
        ("7.", "7"),
        ("\\text{(C)}", "C"),
        ("（B）", "B"),
        ("-3 m", "-3"),
        ("6m", "6m"),
        ("24 岁", "24"),
        ("five", "5"),
        ("x \\in [-2,7]", "[-2,7]"),
        ("[0, +∞)", "[0,\\infty)"),
        ("1, 2, 3, 或 6", "1,2,3,6"),
        ("\\{1,2\\}", "{1,2}"),
        (
            "\\begin{array}{cc} 1 & 2 \\end{array}",
            "\\begin{pmatrix}1&2\\end{pmatrix}",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(normalize(input), want, "normalize({input:?})");
    }
}

#[test]
fn numbers() {
    assert!(is_equivalent("0.5", "\\frac{1}{2}"));
    assert!(is_equivalent("1/2", "\\frac12"));
    assert!(is_equivalent("7 \\frac{3}{11}", "\\frac{80}{11}"));
    assert!(is_equivalent("50%", "0.5"));
    assert!(is_equivalent("50\\%", "50"));
    assert!(is_equivalent("0.625", "62.5%"));
    assert!(!is_equivalent("0.5", "50"));
    assert!(is_equivalent("4.5 \\times 10^{33}", "4.5e33"));
    assert!(is_equivalent("27", "27.0"));
    assert!(!is_equivalent("3986730", "3986729"));
    assert!(is_equivalent("0.33333", "\\frac{1}{3}"));
    assert!(!is_equivalent("0.33", "\\frac{1}{3}"));
    assert!(is_equivalent("2\\sqrt{3}", "\\sqrt{12}"));
    assert!(is_equivalent("3\\pi", "\\frac{6\\pi}{2}"));
    assert!(is_equivalent("-1/3", "-1./3"));
    assert!(is_equivalent("0", "0.0"));
    assert!(!is_equivalent("1", "0"));
}

#[test]
fn choices() {
    assert!(is_equivalent("C", "C"));
    assert!(is_equivalent("(C)", "C"));
    assert!(is_equivalent("C.", "C"));
    assert!(is_equivalent("C. \\{x \\mid -3<x<4\\}", "C"));
    assert!(is_equivalent("\\text{(B)}", "B"));
    assert!(is_equivalent("B", "\\text{(B)}"));
    assert!(!is_equivalent("D", "C"));
    assert!(!is_equivalent("5", "C"));
    assert!(is_equivalent("C", "C. {x \\mid-3<x<4}"));
    assert!(is_equivalent("A: 5", "5"));
}

#[test]
fn intervals_tuples_sets() {
    assert!(is_equivalent("(1,2]", "(1, 2]"));
    assert!(!is_equivalent("(1,2)", "(1,2]"));
    assert!(!is_equivalent("[1,2]", "(1,2)"));
    assert!(is_equivalent("(0.5, -0.5)", "(\\frac{1}{2}, -\\frac12)"));
    assert!(!is_equivalent("(2,1)", "(1,2)"));
    assert!(is_equivalent("2, 1", "1,2"));
    assert!(is_equivalent("\\{3,1,2\\}", "{1,2,3}"));
    assert!(is_equivalent(
        "(-\\infty, 0) \\cup (1, \\infty)",
        "(-\\infty,0)\\cup(1,+\\infty)"
    ));
    assert!(is_equivalent(
        "1+\\sqrt{19}, 1-\\sqrt{19}",
        "1 \\pm \\sqrt{19}"
    ));
    assert!(is_equivalent(
        "\\begin{pmatrix} -0.5 \\\\ 1 \\end{pmatrix}",
        "\\begin{pmatrix} -1/2 \\\\ 1 \\end{pmatrix}"
    ));
    assert!(is_equivalent(
        "(-1/3, 2/3)",
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}"
    ));
}

#[test]
fn symbolic() {
    assert!(is_equivalent("2(k+1)", "2k+2"));
    assert!(is_equivalent("-q+p", "p - q"));
    assert!(!is_equivalent("p + q", "p - q"));
    assert!(is_equivalent("\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}"));
    assert!(is_equivalent("y = 2x+3", "y=3+2x"));
    assert!(!is_equivalent("x = 2", "y = 2"));
    assert!(is_equivalent("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"));
    assert!(is_equivalent("\\ln 4", "2\\ln 2"));
    assert!(is_equivalent("\\sin^2 x + \\cos^2 x", "1"));
    assert!(!is_equivalent("\\text{odd}", "\\text{even}"));
    assert!(!is_equivalent("east", "seat"));
    // the variable on the right, and an equation against a solved form
    assert!(is_equivalent("5 = x", "x=5"));
    assert!(is_equivalent("k+4 = n", "n=k+4"));
    assert!(!is_equivalent("k+4 = m", "n=k+4"));
    assert!(is_equivalent("2x - y + 1 = 0", "y = 2x + 1"));
    assert!(is_equivalent("y = 1 - x", "x + y = 1"));
    assert!(!is_equivalent("y = 1 + x", "x + y = 1"));
    assert!(!is_equivalent("x \\le 3", "3"));
}

#[test]
fn answer_phrases() {
    let got = |t: &str| extract_answer(t).unwrap_or_default();
    assert_eq!(got("So the answer is $\\$36 $."), "\\$36");
    assert_eq!(got("So the answer is $-1$,$2$, and $-2$."), "-1, 2, -2");
    assert_eq!(got("The answer is $5$ apples, $3$ left."), "5");
    assert_eq!(got("The answer is $7"), "7");
    assert!(is_equivalent(
        &got("So the answer is $90 degrees$, $60 degrees$."),
        "90,60"
    ));
}

#[test]
fn words_after_a_number() {
    // LIMO drops a trailing `\text{}` and MathQA's unit words (apples, coins, men, ...).
    assert!(is_equivalent("12 \\text{ red balls}", "12"));
    assert!(is_equivalent("10\\text{ boxes}", "10"));
    assert!(is_equivalent("\\frac{3}{4}\\text{ of the cake}", "0.75"));
    assert!(is_equivalent("(2, 3) \\text{ only}", "(2,3)"));
    assert!(is_equivalent("\\text{12 apples}", "12"));
    assert!(is_equivalent("6 men", "6"));
    assert!(is_equivalent("5\\text{th}", "5"));
    // what LIMO keeps: a whole answer in \text{}, a choice, words not after a number
    assert!(!is_equivalent("\\text{7 cookies}", "7"));
    assert!(is_equivalent("3 \\text{ (B)}", "3 (B)"));
    assert!(!is_equivalent("3 \\text{ (B)}", "3"));
    assert!(!is_equivalent("x \\text{ is odd}", "x"));
    assert!(is_equivalent("\\text{odd}", "odd"));
    assert!(!is_equivalent("12 \\text{ or } 13", "12"));
    assert!(!is_equivalent("2\\text{ and }3\\text{ only}", "2"));
}

#[test]
fn an_empty_box_extracts_nothing() {
    assert_eq!(extract_or_raw("so \\boxed{}."), "");
    assert_eq!(extract_or_raw("\\boxed{ }"), "");
    assert!(!is_equivalent(&extract_or_raw("\\boxed{}"), "3"));
    assert_eq!(extract_or_raw(" 42 "), "42");
    assert_eq!(extract_or_raw("\\boxed{} then \\boxed{4}"), "4");
}
