//! The `filter` expressions of Compute list methods, evaluated against a resource's JSON.
//!
//! From the API reference: an expression is `field operator value`, where the operator is `=`,
//! `!=`, `>`, `<`, `<=`, `>=` or `:` (substring for strings, and `field:*` tests that a key is
//! set); `eq` and `ne` compare against an RE2 regular expression that must match the whole
//! value. Nested fields are dotted (`labels.env`, `scheduling.automaticRestart`). Several
//! parenthesized expressions are ANDed (`(a = 1) (b = 2)`), and `AND`, `OR` and `NOT` may be
//! written explicitly; as in Google's filter grammar, `OR` binds tighter than `AND`.

use serde_json::Value;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every operand holds.
    And(Vec<Filter>),
    /// One operand holds.
    Or(Vec<Filter>),
    /// The operand does not hold.
    Not(Box<Filter>),
    /// `field op value`.
    Compare {
        /// Dotted path.
        field: String,
        /// Operator.
        op: Op,
        /// The literal (quotes removed).
        value: String,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `:`
    Has,
    /// `eq` (regular expression)
    ReEq,
    /// `ne` (regular expression)
    ReNe,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    Quoted(String),
    Op(Op),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '"' | '\'' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated quote in filter {s:?}")),
                        Some('\\') if chars.get(i + 1).is_some() => {
                            value.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(q) if *q == c => {
                            i += 1;
                            break;
                        }
                        Some(other) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Op(Op::Ne));
                i += 2;
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                tokens.push(Token::Op(match (c, eq) {
                    ('<', true) => Op::Le,
                    ('<', false) => Op::Lt,
                    (_, true) => Op::Ge,
                    _ => Op::Gt,
                }));
                i += if eq { 2 } else { 1 };
            }
            '=' => {
                tokens.push(Token::Op(Op::Eq));
                i += 1;
            }
            ':' => {
                tokens.push(Token::Op(Op::Has));
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"()=:!<>\"'".contains(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                tokens.push(match word.as_str() {
                    "eq" => Token::Op(Op::ReEq),
                    "ne" => Token::Op(Op::ReNe),
                    _ => Token::Word(word),
                });
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x == w)
    }

    fn conjunction(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.disjunction()?];
        loop {
            if self.is_word("AND") {
                self.at += 1;
            }
            match self.peek() {
                None | Some(Token::Close) => break,
                _ => terms.push(self.disjunction()?),
            }
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Filter::And(terms) })
    }

    fn disjunction(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.unary()?];
        while self.is_word("OR") {
            self.at += 1;
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 { terms.remove(0) } else { Filter::Or(terms) })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.is_word("NOT") || self.is_word("-") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.conjunction()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("a '(' is not closed".into()),
                }
            }
            Some(Token::Word(field)) => {
                let op = match self.next() {
                    Some(Token::Op(op)) => op,
                    other => return Err(format!("expected an operator after {field:?}, found {other:?}")),
                };
                let value = match self.next() {
                    Some(Token::Word(v) | Token::Quoted(v)) => v,
                    other => return Err(format!("expected a value after {field:?}, found {other:?}")),
                };
                Ok(Filter::Compare { field, op, value })
            }
            other => Err(format!("expected an expression, found {other:?}")),
        }
    }
}

impl Filter {
    /// Parses a filter; an empty string is `None` (everything matches).
    pub fn parse(s: &str) -> Result<Option<Filter>, String> {
        let tokens = tokenize(s)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut p = Parser { tokens, at: 0 };
        let f = p.conjunction()?;
        if p.at < p.tokens.len() {
            return Err(format!("unexpected {:?}", p.tokens[p.at]));
        }
        // Regular expressions are checked once, here, so a bad one is a 400.
        f.check()?;
        Ok(Some(f))
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().try_for_each(Filter::check),
            Filter::Not(f) => f.check(),
            Filter::Compare { op: Op::ReEq | Op::ReNe, value, .. } => {
                regex_lite::Regex::new(&format!("^(?:{value})$")).map(|_| ()).map_err(|e| e.to_string())
            }
            Filter::Compare { .. } => Ok(()),
        }
    }

    /// Whether a resource matches.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(resource)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(resource)),
            Filter::Not(f) => !f.matches(resource),
            Filter::Compare { field, op, value } => {
                let found = lookup(resource, field);
                if *op == Op::Has && value == "*" {
                    return !found.is_empty();
                }
                let negated = matches!(op, Op::Ne | Op::ReNe);
                // A missing field equals nothing; `!=` on it holds.
                if found.is_empty() {
                    return negated;
                }
                let hit = found.iter().any(|v| compare(v, *op, value));
                if negated { found.iter().all(|v| compare(v, *op, value)) } else { hit }
            }
        }
    }
}

/// The values at a dotted path; arrays along the way fan out.
fn lookup<'a>(resource: &'a Value, field: &str) -> Vec<&'a Value> {
    let mut current = vec![resource];
    for part in field.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v {
                Value::Object(m) => {
                    if let Some(x) = m.get(part) {
                        next.push(x);
                    }
                }
                Value::Array(items) => {
                    next.extend(items.iter().filter_map(|i| i.as_object().and_then(|m| m.get(part))));
                }
                _ => {}
            }
        }
        current = next;
    }
    current
        .into_iter()
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn compare(v: &Value, op: Op, literal: &str) -> bool {
    let s = text(v);
    let numeric = || Some((s.parse::<f64>().ok()?, literal.parse::<f64>().ok()?));
    match op {
        Op::Eq => s == literal,
        Op::Ne => s != literal,
        Op::Has => s.contains(literal),
        Op::ReEq | Op::ReNe => {
            let re = regex_lite::Regex::new(&format!("^(?:{literal})$")).expect("checked when parsed");
            re.is_match(&s) == (op == Op::ReEq)
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ord = match numeric() {
                Some((a, b)) => a.partial_cmp(&b),
                None => Some(s.as_str().cmp(literal)),
            };
            matches!(
                (op, ord),
                (Op::Lt, Some(std::cmp::Ordering::Less))
                    | (Op::Le, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))
                    | (Op::Gt, Some(std::cmp::Ordering::Greater))
                    | (Op::Ge, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal))
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Value {
        serde_json::json!({
            "name": "web-0001",
            "status": "RUNNING",
            "labels": { "immut-service": "web", "team": "a_b" },
            "scheduling": { "automaticRestart": true },
            "tags": { "items": ["http", "ssh"] },
        })
    }

    fn holds(f: &str) -> bool {
        Filter::parse(f).unwrap().unwrap().matches(&vm())
    }

    #[test]
    fn comparisons_and_nested_fields() {
        assert!(holds("labels.immut-service = web"));
        assert!(holds(r#"labels.immut-service = "web""#));
        assert!(!holds("labels.immut-service = api"));
        assert!(holds("labels.missing != x"));
        assert!(holds("labels.team:*"));
        assert!(!holds("labels.owner:*"));
        assert!(holds("name:web-"));
        assert!(holds("scheduling.automaticRestart = true"));
        assert!(holds("tags.items = ssh"));
        assert!(holds("name eq 'web-[0-9]+'"));
        assert!(!holds("name eq 'web'"), "eq matches the whole value");
        assert!(holds("name ne 'api-.*'"));
    }

    #[test]
    fn conjunctions_disjunctions_and_negation() {
        assert!(holds("(labels.immut-service = web) (status = RUNNING)"));
        assert!(!holds("(labels.immut-service = web) (status = STOPPING)"));
        assert!(holds("(labels.immut-service = web) AND ((name = a) OR (name = web-0001))"));
        assert!(holds("status = STOPPING OR status = RUNNING"));
        assert!(holds("NOT status = STOPPING"));
        assert!(holds("labels.immut-service=web AND status!=TERMINATED"));
    }

    #[test]
    fn bad_filters_are_refused_and_empty_ones_match_all() {
        assert!(Filter::parse("(name = a").is_err());
        assert!(Filter::parse("name =").is_err());
        assert!(Filter::parse("name eq '('").is_err());
        assert_eq!(Filter::parse("  ").unwrap(), None);
    }
}
