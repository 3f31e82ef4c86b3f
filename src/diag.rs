//! Problems found in user-written files (corpus manifests, later configs and policies), each with
//! its file, line, column and key path, collected all at once rather than stopping at the first.
//!
//! This module owns the spanned TOML reading helpers ([`TomlReader`]); it does not know what any
//! particular file means. Callers walk the document with the helpers and turn it into their own
//! validated types (habit 1 of STYLE.md: raw, then valid). Serde's `deny_unknown_fields` stops at
//! the first problem, which is why the walk is hand-written over `toml_edit`'s spanned document.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, Table, Value};

/// One problem in a user-written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no location (e.g. a missing key at top level).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `metadata.title`; empty for the document itself.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one or more files; displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0)
    }
    /// Orders problems by file and position (stable for problems at the same place).
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Reads a TOML file and reports problems against its spans.
pub struct TomlReader {
    file: PathBuf,
    src: String,
    line_starts: Vec<usize>,
    pub problems: Problems,
}

impl TomlReader {
    /// Parses `src`; a syntax error becomes the one problem and `None` is returned with it.
    pub fn parse(file: &Path, src: String) -> (Self, Option<Document<String>>) {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut reader = TomlReader {
            file: file.to_path_buf(),
            src: src.clone(),
            line_starts,
            problems: Problems::default(),
        };
        match Document::parse(src) {
            Ok(doc) => (reader, Some(doc)),
            Err(e) => {
                let msg = e.message().trim().to_string();
                reader.problem(e.span(), "", format!("invalid TOML: {msg}"));
                (reader, None)
            }
        }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self.src[start..offset.min(self.src.len())].chars().count() + 1;
        (line, col)
    }

    /// Records a problem at `span` (or without location).
    pub fn problem(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = span.map(|s| self.line_col(s.start)).unwrap_or((0, 0));
        self.problems.0.push(Problem {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Reports every key of `table` not in `known`, at its location.
    pub fn unknown_keys(&mut self, table: &Table, prefix: &str, known: &[&str]) {
        for (key, item) in table.iter() {
            if !known.contains(&key) {
                let span = table
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| item.span());
                let expected = known.join("`, `");
                self.problem(
                    span,
                    &join_key(prefix, key),
                    format!("unknown key (expected one of `{expected}`)"),
                );
            }
        }
    }

    /// A string value, or a problem if present with another type.
    pub fn opt_str(&mut self, table: &Table, prefix: &str, key: &str) -> Option<Spanned<String>> {
        let item = table.get(key)?;
        match item.as_str() {
            Some(s) => Some(Spanned {
                value: s.to_string(),
                span: item.span(),
            }),
            None => {
                self.type_problem(item, prefix, key, "a string");
                None
            }
        }
    }

    /// A required string value.
    pub fn req_str(&mut self, table: &Table, prefix: &str, key: &str) -> Option<Spanned<String>> {
        if table.get(key).is_none() {
            self.problem(table.span(), &join_key(prefix, key), "missing required key");
            return None;
        }
        self.opt_str(table, prefix, key)
    }

    /// A non-negative integer, or a problem if present with another type.
    pub fn opt_u64(&mut self, table: &Table, prefix: &str, key: &str) -> Option<Spanned<u64>> {
        let item = table.get(key)?;
        match item.as_integer() {
            Some(i) if i >= 0 => Some(Spanned {
                value: i as u64,
                span: item.span(),
            }),
            Some(_) => {
                self.problem(item.span(), &join_key(prefix, key), "must not be negative");
                None
            }
            None => {
                self.type_problem(item, prefix, key, "an integer");
                None
            }
        }
    }

    /// A number between 0 and 1 (an integer 0 or 1 too), or a problem.
    pub fn opt_fraction(&mut self, table: &Table, prefix: &str, key: &str) -> Option<Spanned<f64>> {
        let item = table.get(key)?;
        match item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64))
        {
            Some(x) if (0.0..=1.0).contains(&x) => Some(Spanned {
                value: x,
                span: item.span(),
            }),
            _ => {
                self.problem(
                    item.span(),
                    &join_key(prefix, key),
                    "expected a number between 0 and 1",
                );
                None
            }
        }
    }

    /// A boolean, or a problem if present with another type.
    pub fn opt_bool(&mut self, table: &Table, prefix: &str, key: &str) -> Option<Spanned<bool>> {
        let item = table.get(key)?;
        match item.as_bool() {
            Some(b) => Some(Spanned {
                value: b,
                span: item.span(),
            }),
            None => {
                self.type_problem(item, prefix, key, "true or false");
                None
            }
        }
    }

    /// A standard table (`[name]`), or a problem if present with another type.
    pub fn opt_std_table<'d>(
        &mut self,
        table: &'d Table,
        prefix: &str,
        key: &str,
    ) -> Option<&'d Table> {
        let item = table.get(key)?;
        match item.as_table() {
            Some(t) => Some(t),
            None => {
                self.type_problem(item, prefix, key, "a table");
                None
            }
        }
    }

    /// A string or an array of strings (a single string counts as a one-element list).
    pub fn opt_str_list(
        &mut self,
        table: &Table,
        prefix: &str,
        key: &str,
    ) -> Option<Vec<Spanned<String>>> {
        let item = table.get(key)?;
        if let Some(s) = item.as_str() {
            return Some(vec![Spanned {
                value: s.to_string(),
                span: item.span(),
            }]);
        }
        let Some(arr) = item.as_array() else {
            self.type_problem(item, prefix, key, "a string or an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(Spanned {
                    value: s.to_string(),
                    span: v.span(),
                }),
                None => self.problem(
                    v.span(),
                    &format!("{}[{i}]", join_key(prefix, key)),
                    format!("expected a string, found {}", value_type(v)),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table (standard or inline), or a problem if present with another type.
    pub fn opt_table<'d>(
        &mut self,
        table: &'d Table,
        prefix: &str,
        key: &str,
    ) -> Option<TableRef<'d>> {
        let item = table.get(key)?;
        match item {
            Item::Table(t) => Some(TableRef::Table(t)),
            Item::Value(Value::InlineTable(t)) => Some(TableRef::Inline(t)),
            _ => {
                self.type_problem(item, prefix, key, "a table");
                None
            }
        }
    }

    fn type_problem(&mut self, item: &Item, prefix: &str, key: &str, expected: &str) {
        let found = match item {
            Item::Value(v) => value_type(v),
            Item::Table(_) => "a table",
            Item::ArrayOfTables(_) => "an array of tables",
            Item::None => "nothing",
        };
        self.problem(
            item.span(),
            &join_key(prefix, key),
            format!("expected {expected}, found {found}"),
        );
    }
}

/// A standard or an inline table, walked the same way.
pub enum TableRef<'d> {
    Table(&'d Table),
    Inline(&'d toml_edit::InlineTable),
}

impl<'d> TableRef<'d> {
    /// Key, value-as-string-if-string, span — for free-form string maps like `[metadata]`.
    pub fn entries(&self) -> Vec<(String, Option<String>, Option<Range<usize>>)> {
        match self {
            TableRef::Table(t) => t
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_str().map(str::to_string), v.span()))
                .collect(),
            TableRef::Inline(t) => t
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_str().map(str::to_string), v.span()))
                .collect(),
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Option<Range<usize>>,
}

pub fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}
