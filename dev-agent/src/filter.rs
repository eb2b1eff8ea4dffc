//! `?filter=`: Consul's boolean expressions over list answers
//! (https://developer.hashicorp.com/consul/api-docs/features/filtering), evaluated on
//! each item as the JSON the endpoint answers with (`docs/consul-semantics.md#dev-agent`).
//!
//! The grammar is go-bexpr's: `or`, `and`, `not` and parentheses over matches of a
//! selector (`Service.Meta.env`, `Meta["env"]`) against a value (a `"quoted"` or
//! `` `raw` `` string, a number, `true`/`false`, or a bare word): `==`, `!=`, `is empty`,
//! `is not empty`, `in` / `not in` (value first), `contains` / `not contains`, `matches`
//! / `not matches` (a regular expression). A selector that passes through a list looks
//! into every element, and a match holds when any element matches. A selector that
//! finds nothing is empty: `==`, `in`, `contains`, `matches` are false there and their
//! negations true. A malformed expression is a 400 with Consul's prefix.

use regex::Regex;
use serde_json::Value;

use super::http::{ApiError, Call};

/// A parsed expression.
#[derive(Debug)]
pub(super) enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

#[derive(Debug)]
pub(super) struct Match {
    selector: Vec<String>,
    op: Op,
    negated: bool,
}

#[derive(Debug)]
enum Op {
    Equal(String),
    Empty,
    /// `in` and `contains`: membership in a list, a key of a map, a substring.
    Contains(String),
    Matches(Regex),
}

/// `?filter=` of a call, parsed; `None` when absent or empty.
pub(super) fn of(call: &Call) -> Result<Option<Expr>, ApiError> {
    match call.query.get("filter").filter(|f| !f.trim().is_empty()) {
        None => Ok(None),
        Some(text) => parse(text).map(Some).map_err(|e| {
            ApiError::bad_request(format!(
                "Failed to create boolean expression evaluator: {e}"
            ))
        }),
    }
}

/// Keeps the items `filter` selects (all of them without one).
pub(super) fn retain<T: serde::Serialize>(filter: Option<&Expr>, items: &mut Vec<T>) {
    if let Some(expr) = filter {
        items.retain(|item| serde_json::to_value(item).is_ok_and(|v| expr.eval(&v)));
    }
}

/// Keeps the entries of a map answer (`/v1/agent/services`, `/v1/agent/checks`) whose
/// value `filter` selects.
pub(super) fn retain_values<T: serde::Serialize>(
    filter: Option<&Expr>,
    items: &mut std::collections::BTreeMap<String, T>,
) {
    if let Some(expr) = filter {
        items.retain(|_, item| serde_json::to_value(&*item).is_ok_and(|v| expr.eval(&v)));
    }
}

impl Expr {
    /// Every selector the expression names, as its dotted parts.
    pub(super) fn selectors(&self) -> Vec<&[String]> {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                let mut all = a.selectors();
                all.extend(b.selectors());
                all
            }
            Expr::Not(e) => e.selectors(),
            Expr::Match(m) => vec![m.selector.as_slice()],
        }
    }

    pub(super) fn eval(&self, item: &Value) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(item) || b.eval(item),
            Expr::And(a, b) => a.eval(item) && b.eval(item),
            Expr::Not(e) => !e.eval(item),
            Expr::Match(m) => m.eval(item),
        }
    }
}

impl Match {
    fn eval(&self, item: &Value) -> bool {
        let mut found = vec![item];
        for part in &self.selector {
            found = found.into_iter().flat_map(|v| step(v, part)).collect();
        }
        let hit = match &self.op {
            Op::Empty => found.iter().all(|v| is_empty(v)),
            Op::Equal(want) => found.iter().any(|v| equals(v, want)),
            Op::Contains(want) => found.iter().any(|v| contains(v, want)),
            Op::Matches(re) => found
                .iter()
                .any(|v| v.as_str().is_some_and(|s| re.is_match(s))),
        };
        hit != self.negated
    }
}

/// One selector step: a field or map key; through a list, into each element.
fn step<'a>(value: &'a Value, key: &str) -> Vec<&'a Value> {
    match value {
        Value::Object(map) => map.get(key).into_iter().collect(),
        Value::Array(items) => items.iter().flat_map(|v| step(v, key)).collect(),
        _ => Vec::new(),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn equals(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s == want,
        Value::Bool(b) => want.parse::<bool>().is_ok_and(|w| w == *b),
        Value::Number(n) => match (n.as_f64(), want.parse::<f64>()) {
            (Some(have), Ok(w)) => have == w,
            _ => false,
        },
        Value::Array(items) => items.iter().any(|v| equals(v, want)),
        _ => false,
    }
}

fn contains(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s.contains(want),
        Value::Array(items) => items.iter().any(|v| equals(v, want)),
        Value::Object(map) => map.contains_key(want),
        _ => false,
    }
}

/// Parses an expression.
pub(super) fn parse(text: &str) -> Result<Expr, String> {
    let tokens = lex(text)?;
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.or()?;
    match parser.tokens.get(parser.pos) {
        None => Ok(expr),
        Some(t) => Err(format!("unexpected {t:?} after the expression")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(&'static str),
    Open,
    Close,
    Dot,
    Index(String),
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | '.' => {
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Dot,
                });
                i += 1;
            }
            '=' | '!' => {
                if chars.get(i + 1) != Some(&'=') {
                    return Err(format!("unexpected {c:?} at {i}"));
                }
                out.push(Token::Op(if c == '=' { "==" } else { "!=" }));
                i += 2;
            }
            '"' | '`' => {
                let (s, next) = quoted(&chars, i)?;
                out.push(Token::Quoted(s));
                i = next;
            }
            '[' => {
                let start = i + 1;
                let (key, next) = match chars.get(start) {
                    Some('"' | '`') => quoted(&chars, start)?,
                    _ => return Err(format!("expected a quoted map key at {start}")),
                };
                if chars.get(next) != Some(&']') {
                    return Err(format!("expected ']' at {next}"));
                }
                out.push(Token::Index(key));
                i = next + 1;
            }
            c if is_word_char(c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            _ => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(out)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '/' | ':' | '+')
}

/// A `"..."` (with `\` escapes) or `` `...` `` string starting at `start`; returns it
/// and the index after its closing quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    while let Some(&c) = chars.get(i) {
        if c == quote {
            return Ok((out, i + 1));
        }
        if c == '\\' && quote == '"' {
            i += 1;
            match chars.get(i) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(&other) => out.push(other),
                None => break,
            }
        } else {
            out.push(c);
        }
        i += 1;
    }
    Err(format!("unterminated string starting at {start}"))
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(w)) if w == word)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let hit = self.peek_word(word);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_word("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.tokens.get(self.pos) == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                other => Err(format!("expected ')', found {other:?}")),
            };
        }
        self.matching().map(Expr::Match)
    }

    /// `value [not] in selector`, or `selector <op> ...`.
    fn matching(&mut self) -> Result<Match, String> {
        let start = self.pos;
        if let Some(value) = self.value_token() {
            let negated = self.eat_word("not");
            if self.eat_word("in") {
                let selector = self.selector()?;
                return Ok(Match {
                    selector,
                    op: Op::Contains(value),
                    negated,
                });
            }
            self.pos = start;
        }
        let selector = self.selector()?;
        let (op, negated) = self.operator()?;
        Ok(Match {
            selector,
            op,
            negated,
        })
    }

    /// A value that starts an `in` match: a quoted string, or a bare word that is
    /// followed by `in` / `not in`.
    fn value_token(&mut self) -> Option<String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Quoted(s)) => {
                self.pos += 1;
                Some(s)
            }
            Some(Token::Word(w)) => {
                let follows = |k: usize, word: &str| matches!(self.tokens.get(self.pos + k), Some(Token::Word(x)) if x == word);
                if follows(1, "in") || (follows(1, "not") && follows(2, "in")) {
                    self.pos += 1;
                    Some(w)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, String> {
        let mut parts = match self.next() {
            Some(Token::Word(w)) if !is_keyword(&w) => vec![w],
            other => return Err(format!("expected a selector, found {other:?}")),
        };
        loop {
            match self.tokens.get(self.pos).cloned() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    match self.next() {
                        Some(Token::Word(w)) => parts.push(w),
                        other => {
                            return Err(format!("expected a field after '.', found {other:?}"));
                        }
                    }
                }
                Some(Token::Index(key)) => {
                    self.pos += 1;
                    parts.push(key);
                }
                _ => return Ok(parts),
            }
        }
    }

    fn operator(&mut self) -> Result<(Op, bool), String> {
        match self.next() {
            Some(Token::Op("==")) => Ok((Op::Equal(self.value()?), false)),
            Some(Token::Op("!=")) => Ok((Op::Equal(self.value()?), true)),
            Some(Token::Word(w)) if w == "is" => {
                let negated = self.eat_word("not");
                if self.eat_word("empty") {
                    Ok((Op::Empty, negated))
                } else {
                    Err("expected 'empty' after 'is'".to_owned())
                }
            }
            Some(Token::Word(w)) if w == "not" => self.word_operator(true),
            Some(Token::Word(_)) => {
                self.pos -= 1;
                self.word_operator(false)
            }
            other => Err(format!("expected an operator, found {other:?}")),
        }
    }

    fn word_operator(&mut self, negated: bool) -> Result<(Op, bool), String> {
        if self.eat_word("contains") {
            return Ok((Op::Contains(self.value()?), negated));
        }
        if self.eat_word("matches") {
            let pattern = self.value()?;
            let re =
                Regex::new(&pattern).map_err(|e| format!("invalid regular expression: {e}"))?;
            return Ok((Op::Matches(re), negated));
        }
        Err(format!(
            "expected an operator, found {:?}",
            self.tokens.get(self.pos)
        ))
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Quoted(s)) => Ok(s),
            Some(Token::Word(w)) if !is_keyword(&w) => {
                // A bare value: a number, true/false, or a word (dots allowed: 1.5).
                let mut text = w;
                while self.tokens.get(self.pos) == Some(&Token::Dot) {
                    match self.tokens.get(self.pos + 1).cloned() {
                        Some(Token::Word(more)) => {
                            text = format!("{text}.{more}");
                            self.pos += 2;
                        }
                        _ => break,
                    }
                }
                Ok(text)
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "and" | "or" | "not" | "in" | "is" | "empty" | "contains" | "matches"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expr: &str, item: &Value) -> bool {
        parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .eval(item)
    }

    #[test]
    fn every_operator_on_an_agent_service() {
        let svc = json!({
            "Kind": "connect-proxy", "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
            "Tags": ["v1", "blue"], "Meta": { "env": "prod", "team-a": "x" }, "Port": 21000,
            "Address": "", "EnableTagOverride": false,
            "Proxy": { "DestinationServiceName": "web",
                       "Upstreams": [ { "DestinationName": "db" }, { "DestinationName": "cache" } ] }
        });
        let yes = [
            r#"Kind == "connect-proxy""#,
            r#"Kind == `connect-proxy`"#,
            "Port == 21000",
            "EnableTagOverride == false",
            r#"Service != "web""#,
            r#""v1" in Tags"#,
            r#""green" not in Tags"#,
            "v1 in Tags",
            r#"Tags contains "blue""#,
            r#"Tags not contains "red""#,
            r#"Service contains "sidecar""#,
            r#"Meta.env == "prod""#,
            r#"Meta["team-a"] == "x""#,
            r#""env" in Meta"#,
            "Address is empty",
            "Meta is not empty",
            "Meta.missing is empty",
            r#"Meta.missing != "x""#,
            r#"Service matches "^web-.*proxy$""#,
            r#"Service not matches "^db""#,
            r#"Proxy.DestinationServiceName == "web""#,
            r#"Proxy.Upstreams.DestinationName == "cache""#,
            r#"Kind == "connect-proxy" and (Port == 1 or not Tags is empty)"#,
            r#"not Kind == "" and Meta.env == prod"#,
        ];
        for expr in yes {
            assert!(check(expr, &svc), "{expr} should match");
        }
        let no = [
            r#"Kind == "typical""#,
            r#""green" in Tags"#,
            r#"Meta.missing == "x""#,
            "Tags is empty",
            r#"Service matches "^db""#,
            r#"Proxy.Upstreams.DestinationName == "queue""#,
            r#"Port == 21000 and Kind == "x" or Port == 1"#,
        ];
        for expr in no {
            assert!(!check(expr, &svc), "{expr} should not match");
        }
    }

    #[test]
    fn malformed_expressions_are_refused() {
        for bad in [
            "",
            "Kind ==",
            "Kind = \"x\"",
            "(Kind == x",
            "Kind == x)",
            "Kind is",
            "Kind matches \"(\"",
            "\"x\" in",
            "Kind == \"x",
            "and",
            "Meta[env] == x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
