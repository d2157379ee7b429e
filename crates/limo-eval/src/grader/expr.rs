//! The expression evaluator behind numeric and symbolic equivalence: a recursive-descent parser
//! of normalized LaTeX answers (integers, decimals, `\frac`, `\sqrt`, `\pi`, powers, functions,
//! implicit products, free variables) into a tree evaluated in f64, compared at fixed points.

use super::*;

pub(super) const GREEK: [&str; 34] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
    "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Upsilon", "Phi", "Psi", "Omega", "hbar",
    "ell",
];

#[derive(Clone, Copy, Debug)]
pub(super) enum Fun {
    Sin,
    Cos,
    Tan,
    Cot,
    Sec,
    Csc,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Lg,
    Exp,
    Floor,
    Ceil,
}

impl Fun {
    pub(super) fn from_name(name: &str) -> Option<Fun> {
        Some(match name {
            "sin" => Fun::Sin,
            "cos" => Fun::Cos,
            "tan" | "tg" => Fun::Tan,
            "cot" | "ctg" => Fun::Cot,
            "sec" => Fun::Sec,
            "csc" => Fun::Csc,
            "arcsin" => Fun::Asin,
            "arccos" => Fun::Acos,
            "arctan" => Fun::Atan,
            "sinh" => Fun::Sinh,
            "cosh" => Fun::Cosh,
            "tanh" => Fun::Tanh,
            "ln" => Fun::Ln,
            "lg" => Fun::Lg,
            "exp" => Fun::Exp,
            _ => return None,
        })
    }

    pub(super) fn apply(self, x: f64) -> f64 {
        match self {
            Fun::Sin => x.sin(),
            Fun::Cos => x.cos(),
            Fun::Tan => x.tan(),
            Fun::Cot => 1.0 / x.tan(),
            Fun::Sec => 1.0 / x.cos(),
            Fun::Csc => 1.0 / x.sin(),
            Fun::Asin => x.asin(),
            Fun::Acos => x.acos(),
            Fun::Atan => x.atan(),
            Fun::Sinh => x.sinh(),
            Fun::Cosh => x.cosh(),
            Fun::Tanh => x.tanh(),
            Fun::Ln => x.ln(),
            Fun::Lg => x.log10(),
            Fun::Exp => x.exp(),
            Fun::Floor => x.floor(),
            Fun::Ceil => x.ceil(),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Node {
    Num(f64),
    Var(String),
    Neg(Box<Node>),
    Bin(char, Box<Node>, Box<Node>),
    Call(Fun, Box<Node>),
    /// index, radicand
    Root(Box<Node>, Box<Node>),
    /// base, argument
    Log(Box<Node>, Box<Node>),
    Fact(Box<Node>),
    Binom(Box<Node>, Box<Node>),
}

impl Node {
    pub(super) fn vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Node::Num(_) => {}
            Node::Var(v) => {
                out.insert(v.clone());
            }
            Node::Neg(a) | Node::Call(_, a) | Node::Fact(a) => a.vars(out),
            Node::Bin(_, a, b) | Node::Root(a, b) | Node::Log(a, b) | Node::Binom(a, b) => {
                a.vars(out);
                b.vars(out);
            }
        }
    }

    pub(super) fn eval(&self, env: &dyn Fn(&str) -> f64) -> f64 {
        match self {
            Node::Num(x) => *x,
            Node::Var(v) => env(v),
            Node::Neg(a) => -a.eval(env),
            Node::Bin(op, a, b) => {
                let (x, y) = (a.eval(env), b.eval(env));
                match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    '/' => x / y,
                    '^' => x.powf(y),
                    _ => f64::NAN,
                }
            }
            Node::Call(f, a) => f.apply(a.eval(env)),
            Node::Root(n, a) => {
                let (n, x) = (n.eval(env), a.eval(env));
                if x < 0.0 && n.fract() == 0.0 && (n as i64) % 2 != 0 {
                    -(-x).powf(1.0 / n)
                } else {
                    x.powf(1.0 / n)
                }
            }
            Node::Log(b, a) => a.eval(env).ln() / b.eval(env).ln(),
            Node::Fact(a) => {
                let x = a.eval(env);
                if x.fract() != 0.0 || !(0.0..=170.0).contains(&x) {
                    return f64::NAN;
                }
                (1..=x as u32).fold(1.0, |acc, k| acc * k as f64)
            }
            Node::Binom(n, k) => {
                let (n, k) = (n.eval(env), k.eval(env));
                if n.fract() != 0.0 || k.fract() != 0.0 || k < 0.0 || n < 0.0 || k > n || n > 1e6 {
                    return f64::NAN;
                }
                let k = k.min(n - k) as u64;
                (0..k).fold(1.0, |acc, i| acc * (n - i as f64) / (i as f64 + 1.0))
            }
        }
    }
}

/// Where variables are sampled, per evaluation point: three points in (0.6, 2.3), where
/// `\sqrt`, `\ln` and powers are defined, then larger and negative ones, without which
/// `\lfloor n/3 \rfloor` would equal 0 and `\sqrt{x^2}` would equal `x`.
const RANGES: [(f64, f64); 6] = [
    (0.6, 2.3),
    (0.6, 2.3),
    (0.6, 2.3),
    (3.1, 9.7),
    (-2.3, -0.6),
    (11.2, 47.9),
];

/// The value of variable `name` at evaluation point `k`: a fixed pseudo-random number in
/// `RANGES[k]`, different per name.
pub(super) fn var_value(name: &str, k: usize) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([k as u8, 0x5a]) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let (lo, hi) = RANGES[k % RANGES.len()];
    lo + (h % 10_007) as f64 / 10_007.0 * (hi - lo)
}

/// Whether two expressions are equal: their values (constants), or their values at every point
/// of `RANGES` (free variables). A point where either side is not finite says nothing (answers
/// assume their domain: `\ln x` against `2\ln\sqrt{x}` at a negative `x`); `None` when the
/// first, always-defined points are not finite either.
pub(super) fn exprs_equal(a: &Node, b: &Node) -> Option<bool> {
    let mut vars = BTreeSet::new();
    a.vars(&mut vars);
    b.vars(&mut vars);
    let points = if vars.is_empty() { 1 } else { RANGES.len() };
    for k in 0..points {
        let env = |name: &str| var_value(name, k);
        let (x, y) = (a.eval(&env), b.eval(&env));
        if !x.is_finite() || !y.is_finite() {
            if k < 3 {
                return None;
            }
            continue;
        }
        if !close(x, y) {
            return Some(false);
        }
    }
    Some(true)
}

/// A trailing `%` read off, then the expression.
pub(super) fn parse_with_percent(s: &str) -> Option<(Node, bool)> {
    let (body, pct) = match s.strip_suffix('%') {
        Some(b) => (b, true),
        None => (s, false),
    };
    Some((parse_expression(body)?, pct))
}

/// A normalized answer as an expression; `None` for text, sets, relations, ...
pub(super) fn parse_expression(s: &str) -> Option<Node> {
    if s.is_empty() || s.len() > MAX_EVAL_CHARS {
        return None;
    }
    if let Some(n) = mixed_number(s) {
        return Some(Node::Num(n));
    }
    if has_word(s) {
        return None;
    }
    let mut p = Parser {
        s: s.chars().collect(),
        i: 0,
        depth: 0,
    };
    let node = p.expr()?;
    (p.i == p.s.len()).then_some(node)
}

/// `7\frac{3}{11}` -> 7 + 3/11 (integer part and a proper fraction of integers).
pub(super) fn mixed_number(s: &str) -> Option<f64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let pos = body.find("\\frac{")?;
    let int = &body[..pos];
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = body[pos + 6..].strip_suffix('}')?;
    let (a, b) = rest.split_once("}{")?;
    if a.is_empty() || b.is_empty() || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (i, a, b): (f64, f64, f64) = (int.parse().ok()?, a.parse().ok()?, b.parse().ok()?);
    if b == 0.0 || a >= b {
        return None;
    }
    let v = i + a / b;
    Some(if neg { -v } else { v })
}

/// Three or more letters in a row outside a `\command`: a word, not a product of variables.
pub(super) fn has_word(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 1;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            run = 0;
            continue;
        }
        if b[i].is_ascii_alphabetic() {
            run += 1;
            if run >= 3 {
                return true;
            }
        } else {
            run = 0;
        }
        i += 1;
    }
    false
}

pub(super) struct Parser {
    s: Vec<char>,
    i: usize,
    depth: usize,
}

impl Parser {
    pub(super) fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    pub(super) fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The command name at the cursor (which is on `\`), without consuming it.
    pub(super) fn command_name(&self) -> String {
        self.s[self.i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect()
    }

    pub(super) fn eat_command(&mut self, name: &str) -> bool {
        if self.peek() == Some('\\') && self.command_name() == name {
            self.i += 1 + name.len();
            self.eat(' ');
            true
        } else {
            false
        }
    }

    /// Whether the next token starts a factor (for implicit multiplication).
    pub(super) fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_digit() || c.is_ascii_alphabetic() => true,
            Some('.' | '(' | '[' | '{') => true,
            Some('\\') => {
                let name = self.command_name();
                matches!(
                    name.as_str(),
                    "frac" | "sqrt" | "pi" | "binom" | "lfloor" | "lceil" | "log"
                ) || Fun::from_name(&name).is_some()
                    || GREEK.contains(&name.as_str())
            }
            _ => false,
        }
    }

    pub(super) fn next_is_function(&self) -> bool {
        self.peek() == Some('\\') && {
            let name = self.command_name();
            Fun::from_name(&name).is_some() || name == "log"
        }
    }

    pub(super) fn expr(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let mut lhs = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let rhs = self.term()?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Some(lhs)
    }

    pub(super) fn term(&mut self) -> Option<Node> {
        let mut lhs = self.unary()?;
        loop {
            match self.peek() {
                Some(op @ ('*' | '/')) => {
                    self.i += 1;
                    let rhs = self.unary()?;
                    lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs));
                }
                _ if self.starts_factor() => {
                    let rhs = self.power()?;
                    lhs = Node::Bin('*', Box::new(lhs), Box::new(rhs));
                }
                _ => break,
            }
        }
        Some(lhs)
    }

    pub(super) fn unary(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let node = if self.eat('-') {
            Node::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(node)
    }

    pub(super) fn power(&mut self) -> Option<Node> {
        let base = self.postfix()?;
        if self.eat('^') {
            let exp = self.exponent()?;
            return Some(Node::Bin('^', Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// The exponent after `^`: a group, a signed exponent, or one factor with its own exponent
    /// (right-associative), which is what [`Self::unary`] parses.
    pub(super) fn exponent(&mut self) -> Option<Node> {
        self.unary()
    }

    pub(super) fn postfix(&mut self) -> Option<Node> {
        let mut node = self.primary()?;
        while self.eat('!') {
            node = Node::Fact(Box::new(node));
        }
        Some(node)
    }

    pub(super) fn group(&mut self, open: char, close: char) -> Option<Node> {
        if !self.eat(open) {
            return None;
        }
        let node = self.expr()?;
        self.eat(close).then_some(node)
    }

    pub(super) fn primary(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_PARSE_DEPTH {
            return None;
        }
        let node = self.primary_inner();
        self.depth -= 1;
        node
    }

    pub(super) fn primary_inner(&mut self) -> Option<Node> {
        match self.peek()? {
            c if c.is_ascii_digit() || c == '.' => self.number(),
            '(' => self.group('(', ')'),
            '[' => self.group('[', ']'),
            '{' => self.group('{', '}'),
            '\\' => self.command(),
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                if c == 'e' && self.peek() != Some('_') {
                    return Some(Node::Num(std::f64::consts::E));
                }
                let mut name = c.to_string();
                if self.eat('_') {
                    match self.peek()? {
                        '{' => {
                            let start = self.i;
                            let mut depth = 0;
                            while let Some(ch) = self.peek() {
                                self.i += 1;
                                if ch == '{' {
                                    depth += 1;
                                } else if ch == '}' {
                                    depth -= 1;
                                    if depth == 0 {
                                        break;
                                    }
                                }
                            }
                            if depth != 0 {
                                return None;
                            }
                            name.push('_');
                            name.extend(&self.s[start..self.i]);
                        }
                        ch if ch.is_ascii_alphanumeric() => {
                            self.i += 1;
                            name.push('_');
                            name.push(ch);
                        }
                        _ => return None,
                    }
                }
                Some(Node::Var(name))
            }
            _ => None,
        }
    }

    pub(super) fn number(&mut self) -> Option<Node> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.eat('.') {
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        // scientific notation: 4.5e33, 1e-5
        if matches!(self.peek(), Some('e' | 'E')) {
            let j = self.i + 1;
            let k = if matches!(self.s.get(j), Some('+' | '-')) {
                j + 1
            } else {
                j
            };
            if self.s.get(k).is_some_and(|c| c.is_ascii_digit()) {
                self.i = k;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
        }
        let text: String = self.s[start..self.i].iter().collect();
        let text = if text.starts_with('.') {
            format!("0{text}")
        } else {
            text
        };
        let text = text.strip_suffix('.').map(str::to_string).unwrap_or(text);
        text.parse::<f64>().ok().map(Node::Num)
    }

    /// The argument of a braced-or-not macro argument (`\sqrt{2}`, `\sqrt2`).
    pub(super) fn group_or_atom(&mut self) -> Option<Node> {
        match self.peek()? {
            '{' => self.group('{', '}'),
            c if c.is_ascii_digit() => {
                self.i += 1;
                Some(Node::Num(c.to_digit(10)? as f64))
            }
            _ => self.primary(),
        }
    }

    /// A function's argument: `(x)`, `{x}`, or an implicit product of powers (`\sin 2x`).
    pub(super) fn function_argument(&mut self) -> Option<Node> {
        if matches!(self.peek(), Some('(' | '[' | '{')) {
            return self.postfix();
        }
        let mut node = self.power()?;
        while self.starts_factor() && !self.next_is_function() {
            let rhs = self.power()?;
            node = Node::Bin('*', Box::new(node), Box::new(rhs));
        }
        Some(node)
    }

    pub(super) fn command(&mut self) -> Option<Node> {
        let name = self.command_name();
        self.i += 1 + name.len();
        self.eat(' ');
        match name.as_str() {
            "frac" => {
                let a = self.group_or_atom()?;
                let b = self.group_or_atom()?;
                Some(Node::Bin('/', Box::new(a), Box::new(b)))
            }
            "sqrt" => {
                let index = if self.peek() == Some('[') {
                    self.group('[', ']')?
                } else {
                    Node::Num(2.0)
                };
                let a = self.group_or_atom()?;
                Some(Node::Root(Box::new(index), Box::new(a)))
            }
            "pi" => Some(Node::Num(std::f64::consts::PI)),
            "binom" => {
                let n = self.group_or_atom()?;
                let k = self.group_or_atom()?;
                Some(Node::Binom(Box::new(n), Box::new(k)))
            }
            "lfloor" | "lceil" => {
                let inner = self.expr()?;
                let close = if name == "lfloor" { "rfloor" } else { "rceil" };
                if !self.eat_command(close) {
                    return None;
                }
                let f = if name == "lfloor" {
                    Fun::Floor
                } else {
                    Fun::Ceil
                };
                Some(Node::Call(f, Box::new(inner)))
            }
            "log" => {
                let base = if self.eat('_') {
                    Some(self.group_or_atom()?)
                } else {
                    None
                };
                let power = if self.eat('^') {
                    Some(self.exponent()?)
                } else {
                    None
                };
                let arg = self.function_argument()?;
                let node = match base {
                    Some(b) => Node::Log(Box::new(b), Box::new(arg)),
                    None => Node::Call(Fun::Ln, Box::new(arg)),
                };
                Some(match power {
                    Some(p) => Node::Bin('^', Box::new(node), Box::new(p)),
                    None => node,
                })
            }
            n if GREEK.contains(&n) => Some(Node::Var(format!("\\{n}"))),
            n => {
                let f = Fun::from_name(n)?;
                let power = if self.eat('^') {
                    Some(self.exponent()?)
                } else {
                    None
                };
                let arg = self.function_argument()?;
                let node = Node::Call(f, Box::new(arg));
                Some(match power {
                    // \sin^{-1} is arcsin
                    Some(Node::Neg(ref one)) if matches!(**one, Node::Num(x) if x == 1.0) => {
                        let inv = match f {
                            Fun::Sin => Fun::Asin,
                            Fun::Cos => Fun::Acos,
                            Fun::Tan => Fun::Atan,
                            _ => {
                                return Some(Node::Bin(
                                    '^',
                                    Box::new(node),
                                    Box::new(Node::Num(-1.0)),
                                ))
                            }
                        };
                        match node {
                            Node::Call(_, a) => Node::Call(inv, a),
                            other => other,
                        }
                    }
                    Some(p) => Node::Bin('^', Box::new(node), Box::new(p)),
                    None => node,
                })
            }
        }
    }
}
