//! Walking a parsed TOML document while collecting problems.
//!
//! serde would stop at the first error and lose positions; instead every
//! getter here reports a wrong type or value as a [`Problem`] (with the line
//! of the offending value) and returns `None`, so the caller keeps the default
//! and carries on, and one run reports everything that is wrong.

use std::ops::Range;
use std::path::Path;

use toml_edit::{Item, TableLike, Value};

use crate::suggest;
use crate::Problem;

/// One file being read: its text (for line numbers) and the problems found so far.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    pub problems: Vec<Problem>,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path,
            line_starts,
            problems: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Byte offset where the line holding `offset` starts.
    pub fn line_start(&self, offset: usize) -> usize {
        let line = self.line_of(offset);
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }

    /// 1-based line where a span starts; 0 when there is no span.
    pub fn line(&self, span: Option<Range<usize>>) -> usize {
        span.map_or(0, |s| self.line_of(s.start))
    }

    /// Line of `span`, or `fallback` when there is none.
    pub fn line_or(&self, span: Option<Range<usize>>, fallback: usize) -> usize {
        match self.line(span) {
            0 => fallback,
            l => l,
        }
    }

    pub fn report(&mut self, line: usize, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.path.to_path_buf(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// A table (`[general]`, one `[[users]]` entry, or an inline table) with the
/// line of its header and the prefix its keys are reported under.
pub(crate) struct Section<'t> {
    pub table: &'t dyn TableLike,
    /// Key prefix, e.g. "general"; "" for the top level.
    pub prefix: &'static str,
    /// Line of the header; missing keys are reported here.
    pub line: usize,
}

impl<'t> Section<'t> {
    /// The dotted name of `key` for messages.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// Line of the value of `key` (else of the key, else of the header).
    pub fn line_of(&self, src: &Source, key: &str) -> usize {
        let Some((k, item)) = self.table.get_key_value(key) else {
            return self.line;
        };
        let line = src.line(item.span());
        if line != 0 {
            return line;
        }
        let line = src.line(k.span());
        if line != 0 {
            line
        } else {
            self.line
        }
    }

    /// Reports `message` against `key` at its line.
    pub fn report(&self, src: &mut Source, key: &str, message: impl Into<String>) {
        let line = self.line_of(src, key);
        src.report(line, self.path(key), message);
    }

    /// Reports every key not in `known`, with a suggestion. `here` names the
    /// table in messages, e.g. "[general]".
    pub fn check_unknown(&self, src: &mut Source, known: &[&str], here: &str) {
        for (key, item) in self.table.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = self
                .table
                .key(key)
                .and_then(|k| k.span())
                .or_else(|| item.span());
            let line = src.line_or(span, self.line);
            src.report(line, self.path(key), suggest::unknown_key(key, known, here));
        }
    }

    fn value(&self, src: &mut Source, key: &str, expected: &str) -> Option<&'t Value> {
        let item = self.table.get(key)?;
        match item.as_value() {
            Some(v) => Some(v),
            None => {
                self.report(
                    src,
                    key,
                    format!("expected {expected}, found {}", item_type(item)),
                );
                None
            }
        }
    }

    /// A string value; wrong type reported.
    pub fn string(&self, src: &mut Source, key: &str) -> Option<String> {
        let v = self.value(src, key, "a string")?;
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.report(
                    src,
                    key,
                    format!("expected a string, found {}", value_type(v)),
                );
                None
            }
        }
    }

    /// A string that must not be empty when given.
    pub fn non_empty_string(&self, src: &mut Source, key: &str) -> Option<String> {
        let s = self.string(src, key)?;
        if s.is_empty() {
            self.report(src, key, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A boolean value; wrong type reported.
    pub fn boolean(&self, src: &mut Source, key: &str) -> Option<bool> {
        let v = self.value(src, key, "true or false")?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.report(
                    src,
                    key,
                    format!("expected true or false, found {}", value_type(v)),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`; wrong type, negatives and range reported.
    pub fn integer(&self, src: &mut Source, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.value(src, key, "an integer")?;
        let Some(n) = v.as_integer() else {
            self.report(
                src,
                key,
                format!("expected an integer, found {}", value_type(v)),
            );
            return None;
        };
        if n < 0 && min >= 0 {
            self.report(src, key, format!("must not be negative (got {n})"));
            None
        } else if n < min {
            self.report(src, key, format!("must be at least {min} (got {n})"));
            None
        } else if n > max {
            self.report(src, key, format!("must be at most {max} (got {n})"));
            None
        } else {
            Some(n)
        }
    }

    pub fn u64(&self, src: &mut Source, key: &str, min: u64) -> Option<u64> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        self.integer(src, key, min, i64::MAX)
            .and_then(|n| u64::try_from(n).ok())
    }

    pub fn u32(&self, src: &mut Source, key: &str, min: u32) -> Option<u32> {
        self.integer(src, key, i64::from(min), i64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    pub fn usize(&self, src: &mut Source, key: &str, min: usize) -> Option<usize> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        self.integer(src, key, min, max)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// One of a fixed set of spellings; a bad one is reported with the list.
    pub fn choice<T>(
        &self,
        src: &mut Source,
        key: &str,
        names: &[&str],
        lookup: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.string(src, key)?;
        match lookup(&s) {
            Some(t) => Some(t),
            None => {
                let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>();
                self.report(
                    src,
                    key,
                    format!("\"{s}\" is not one of {}", list.join(", ")),
                );
                None
            }
        }
    }

    /// An array of non-empty strings; each bad element is reported at its own line.
    pub fn strings(&self, src: &mut Source, key: &str) -> Option<Vec<String>> {
        let v = self.value(src, key, "an array of strings")?;
        let Some(array) = v.as_array() else {
            self.report(
                src,
                key,
                format!("expected an array of strings, found {}", value_type(v)),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, elem) in array.iter().enumerate() {
            let line = src.line_or(elem.span(), self.line_of(src, key));
            match elem.as_str() {
                Some("") => {
                    src.report(
                        line,
                        self.path(key),
                        format!("element {} must not be empty", i + 1),
                    );
                    ok = false;
                }
                Some(s) => out.push(s.to_string()),
                None => {
                    let msg = format!(
                        "element {} should be a string, found {}",
                        i + 1,
                        value_type(elem)
                    );
                    src.report(line, self.path(key), msg);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// Sets `*field` when `value` is `Some`: keeps the default otherwise.
pub(crate) fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// The entries of an array of tables (`[[name]]`, or an array of inline tables).
/// Anything else is reported and yields no entries.
pub(crate) fn entries<'t>(
    src: &mut Source,
    item: &'t Item,
    key_line: usize,
    prefix: &'static str,
) -> Vec<Section<'t>> {
    if let Some(aot) = item.as_array_of_tables() {
        return aot
            .iter()
            .map(|t| Section {
                table: t,
                prefix,
                line: src.line_or(t.span(), key_line),
            })
            .collect();
    }
    if let Some(array) = item.as_array() {
        let mut out = Vec::new();
        for elem in array.iter() {
            match elem.as_inline_table() {
                Some(t) => out.push(Section {
                    table: t,
                    prefix,
                    line: src.line_or(t.span(), key_line),
                }),
                None => src.report(
                    src.line_or(elem.span(), key_line),
                    prefix,
                    format!(
                        "expected a table ([[{prefix}]]), found {}",
                        value_type(elem)
                    ),
                ),
            }
        }
        return out;
    }
    src.report(
        key_line,
        prefix,
        format!(
            "expected an array of tables ([[{prefix}]]), found {}",
            item_type(item)
        ),
    );
    Vec::new()
}

/// A single table (`[name]` or an inline table); anything else is reported.
pub(crate) fn table<'t>(
    src: &mut Source,
    item: &'t Item,
    key_line: usize,
    prefix: &'static str,
) -> Option<Section<'t>> {
    if let Some(t) = item.as_table() {
        // An implicit table (only `[general.x]` headers or dotted keys) has no
        // header of its own; the line of its first key is the best place.
        let span = t
            .span()
            .filter(|s| !s.is_empty())
            .or_else(|| t.iter().find_map(|(k, _)| t.key(k).and_then(|k| k.span())));
        return Some(Section {
            table: t,
            prefix,
            line: src.line_or(span, key_line),
        });
    }
    if let Some(t) = item.as_inline_table() {
        return Some(Section {
            table: t,
            prefix,
            line: src.line_or(t.span(), key_line),
        });
    }
    src.report(
        key_line,
        prefix,
        format!("expected a table ([{prefix}]), found {}", item_type(item)),
    );
    None
}

fn item_type(item: &Item) -> &'static str {
    match item {
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::None => "nothing",
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}
