//! The lexical level of the text format: a cursor over one line that reads names, label
//! sets and tokens, and the spelling of numbers and escapes.

use std::collections::HashSet;

use crate::exposition::names::{
    is_label_name_char, is_metric_name_char, is_valid_label_name, is_valid_metric_name,
};

/// A sample's labels as written, values unescaped.
pub(super) type RawLabels = Vec<(String, String)>;

/// A position in one line.
pub(super) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    pub(super) fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos == self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub(super) fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; whether there were any.
    pub(super) fn skip_blanks(&mut self) -> bool {
        let rest = self.rest();
        let skipped = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        self.pos += skipped;
        skipped > 0
    }

    /// Everything up to the next blank.
    pub(super) fn token(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    pub(super) fn metric_name(&mut self) -> Result<&'a str, String> {
        let name = self.take_while(is_metric_name_char);
        if is_valid_metric_name(name) {
            Ok(name)
        } else {
            let shown = if name.is_empty() { self.token() } else { name };
            Err(format!("`{shown}` is not a valid metric name"))
        }
    }

    /// The label set after `{`, up to and including `}`; a trailing comma is allowed.
    pub(super) fn labels(&mut self) -> Result<RawLabels, String> {
        let mut labels = RawLabels::new();
        let mut seen = HashSet::new();
        loop {
            self.skip_blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self.take_while(is_label_name_char);
            if !is_valid_label_name(name) {
                let shown = if name.is_empty() { self.rest() } else { name };
                return Err(format!("`{shown}` is not a valid label name"));
            }
            self.skip_blanks();
            if !self.eat('=') {
                return Err(format!("label `{name}` needs `=` and a quoted value"));
            }
            self.skip_blanks();
            if !self.eat('"') {
                return Err(format!(
                    "the value of label `{name}` must be in double quotes"
                ));
            }
            let value = self.quoted()?;
            if !seen.insert(name) {
                return Err(format!("label `{name}` appears twice"));
            }
            labels.push((name.to_string(), value));
            self.skip_blanks();
            if !self.eat(',') && self.peek() != Some('}') {
                return Err(format!(
                    "expected `,` or `}}` after the value of label `{name}`"
                ));
            }
        }
    }

    /// A label value after its opening quote, up to and including the closing one.
    fn quoted(&mut self) -> Result<String, String> {
        let rest = self.rest();
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    self.pos += i + 1;
                    return unescape(&rest[..i], true);
                }
                _ => {}
            }
        }
        Err("a label value has no closing quote".into())
    }
}

/// A float as Go's `strconv.ParseFloat` reads it in this format: decimal or exponent
/// notation, `NaN`, `+Inf`, `-Inf` (any case, `Inf` or `Infinity`).
pub(super) fn parse_value(token: &str) -> Result<f64, String> {
    let lower = token.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    let negative = lower.starts_with('-');
    let special = match unsigned {
        "nan" => Some(f64::NAN),
        "inf" | "infinity" if negative => Some(f64::NEG_INFINITY),
        "inf" | "infinity" => Some(f64::INFINITY),
        _ => None,
    };
    // Only one sign, and only the characters of decimal/exponent notation.
    let well_formed = lower.len() - unsigned.len() <= 1
        && !unsigned.is_empty()
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-'));
    match special {
        Some(v) if lower.len() - unsigned.len() <= 1 => Ok(v),
        _ if well_formed => lower
            .parse::<f64>()
            .map_err(|_| format!("`{token}` is not a number")),
        _ => Err(format!("`{token}` is not a number")),
    }
}

/// Undoes the format's escapes: `\\` and `\n` everywhere, `\"` in label values.
pub(super) fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(other) => return Err(format!("invalid escape sequence `\\{other}`")),
            None => return Err("a backslash ends the line".into()),
        }
    }
    Ok(out)
}

/// A bound or value as an error message shows it.
pub(super) fn fmt_value(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}
