//! Typed, line-aware reads of the parsed TOML document.
//!
//! The config is parsed into toml's spanned tree ([`DeTable`]) rather than through serde, so
//! every read knows the byte span of its key and value; [`Doc`] turns spans into line
//! numbers. [`Table`] and [`Item`] are the only ways the rest of `config` looks at TOML: each
//! read either yields a Rust value or a [`ConfigError`] naming the key's dotted path and line.
//! Nothing here knows about pipelines.

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::ConfigError;

/// The (interpolated) config text, for turning byte offsets into 1-based line numbers.
pub(super) struct Doc {
    line_starts: Vec<usize>,
}

impl Doc {
    pub(super) fn new(text: &str) -> Doc {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Doc { line_starts }
    }

    /// `text` (the text this was made of) parsed as TOML; invalid TOML is an error at its
    /// line.
    pub(super) fn parse<'t>(&self, text: &'t str) -> Result<Spanned<DeTable<'t>>, ConfigError> {
        DeTable::parse(text).map_err(|error| ConfigError::Line {
            line: error.span().map_or(1, |span| self.line(span.start)),
            message: format!("invalid TOML: {}", error.message().replace('\n', " ")),
        })
    }

    /// The 1-based line holding byte `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// A value with the line it was written on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Located<T> {
    pub(super) value: T,
    pub(super) line: usize,
}

/// A TOML table at a dotted `path` (empty for the document root).
#[derive(Clone)]
pub(super) struct Table<'a> {
    doc: &'a Doc,
    entries: &'a DeTable<'a>,
    path: String,
    /// The line that opens the table (its `[header]`, or its key); 1 for the root.
    line: usize,
}

/// One `key = value` of a table (or one element of an array, which keeps its array's key).
#[derive(Clone)]
pub(super) struct Item<'a> {
    doc: &'a Doc,
    /// The path of the table holding the key.
    parent: String,
    key: &'a str,
    key_line: usize,
    value: &'a Spanned<DeValue<'a>>,
}

impl<'a> Table<'a> {
    pub(super) fn root(doc: &'a Doc, entries: &'a DeTable<'a>) -> Table<'a> {
        Table { doc, entries, path: String::new(), line: 1 }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The line that opens the table.
    pub(super) fn line(&self) -> usize {
        self.line
    }

    /// An error about the table as a whole, at its opening line.
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, message, self.line)
    }

    /// The entries in the order they are written in the file (toml's map is sorted by key).
    pub(super) fn items(&self) -> Vec<Item<'a>> {
        let mut entries: Vec<_> = self.entries.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        entries.into_iter().map(|(key, value)| self.item(key, value)).collect()
    }

    fn item(&self, key: &'a Spanned<DeString<'a>>, value: &'a Spanned<DeValue<'a>>) -> Item<'a> {
        Item {
            doc: self.doc,
            parent: self.path.clone(),
            key: key.get_ref().as_ref(),
            key_line: self.doc.line(key.span().start),
            value,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Item<'a>> {
        self.entries.get_key_value(key).map(|(key, value)| self.item(key, value))
    }

    pub(super) fn require(&self, key: &str) -> Result<Item<'a>, ConfigError> {
        self.get(key).ok_or_else(|| self.error(format!("missing required key \"{key}\"")))
    }

    /// The first key (in file order) not in `known`, as an error with the closest known key as
    /// a hint.
    pub(super) fn deny_unknown_keys(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.items().into_iter().find(|item| !known.contains(&item.key())) {
            Some(item) => Err(item.unknown_key(known)),
            None => Ok(()),
        }
    }
}

impl<'a> Item<'a> {
    /// The key's own name.
    pub(super) fn key(&self) -> &'a str {
        self.key
    }

    /// The dotted path of the key, e.g. `transforms.windows.size_ms`.
    pub(super) fn path(&self) -> String {
        join(&self.parent, self.key)
    }

    /// The line of the key.
    pub(super) fn key_line(&self) -> usize {
        self.key_line
    }

    /// The line where the value starts.
    pub(super) fn line(&self) -> usize {
        self.doc.line(self.value.span().start)
    }

    /// An error about this value, at its line.
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path(), message, self.line())
    }

    /// `table: unknown key "k" (line n)`, with a hint when a known key is close.
    pub(super) fn unknown_key(&self, known: &[&str]) -> ConfigError {
        let error = ConfigError::at(&self.parent, format!("unknown key {:?}", self.key), self.key_line);
        match closest(self.key(), known.iter().copied()) {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    }

    /// How the value reads in a message: strings quoted, numbers as written, containers by kind.
    pub(super) fn found(&self) -> String {
        found(self.value.get_ref())
    }

    fn expected(&self, what: &str) -> ConfigError {
        self.error(format!("expected {what}, found {}", self.found()))
    }

    pub(super) fn str(&self) -> Result<&'a str, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.expected("a string")),
        }
    }

    pub(super) fn non_empty_str(&self) -> Result<&'a str, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) if !s.trim().is_empty() => Ok(s.as_ref()),
            _ => Err(self.expected("a non-empty string")),
        }
    }

    pub(super) fn bool(&self) -> Result<bool, ConfigError> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.expected("true or false")),
        }
    }

    /// An integer in `min..=max`; `what` is the expectation shown when it is not, for example
    /// "a positive integer".
    fn int_in(&self, min: u64, max: u64, what: &str) -> Result<u64, ConfigError> {
        let DeValue::Integer(int) = self.value.get_ref() else {
            return Err(self.expected(what));
        };
        match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) => match u64::try_from(n) {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(self.expected(what)),
            },
            Err(_) => Err(self.error(format!("expected {what}, found {} (out of range)", self.found()))),
        }
    }

    /// An integer of at least 1.
    pub(super) fn positive(&self) -> Result<u64, ConfigError> {
        self.int_in(1, i64::MAX as u64, "a positive integer")
    }

    /// An integer of at least 0.
    pub(super) fn non_negative(&self) -> Result<u64, ConfigError> {
        self.int_in(0, i64::MAX as u64, "a non-negative integer")
    }

    /// An integer in `min..=max`.
    pub(super) fn int_between(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.int_in(min, max, &format!("an integer from {min} to {max}"))
    }

    /// One of a fixed set of strings.
    pub(super) fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T, ConfigError> {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let text = self.str().map_err(|_| self.expected(&one_of(&names)))?;
        match options.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => Ok(*value),
            None => Err(self.expected(&one_of(&names))),
        }
    }

    /// The elements of an array, each with its line.
    pub(super) fn array(&self, of_what: &str) -> Result<Vec<Item<'a>>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Array(items) => Ok(items.iter().map(|value| Item { value, ..self.clone() }).collect()),
            _ => Err(self.expected(&format!("an array of {of_what}"))),
        }
    }

    /// An array of strings, each with its line.
    pub(super) fn str_list(&self) -> Result<Vec<Located<String>>, ConfigError> {
        self.array("strings")?
            .into_iter()
            .map(|item| Ok(Located { value: item.non_empty_str()?.to_owned(), line: item.line() }))
            .collect()
    }

    pub(super) fn table(&self) -> Result<Table<'a>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Table(entries) => {
                Ok(Table { doc: self.doc, entries, path: self.path(), line: self.key_line })
            }
            _ => Err(self.expected("a table")),
        }
    }

    /// The line of the value at `path` below this one (`a.b`, with `a.0` or `a[0]` for array
    /// elements); as deep as `path` resolves, so a wrong path still gives a useful line.
    pub(super) fn line_of(&self, path: &str) -> usize {
        let mut value = self.value;
        let mut line = self.key_line;
        for segment in path.split(['.', '[']).filter(|s| !s.is_empty()) {
            let segment = segment.trim_end_matches(']');
            let next = match value.get_ref() {
                DeValue::Table(table) => table.get_key_value(segment).map(|(k, v)| (k.span().start, v)),
                DeValue::Array(array) => {
                    segment.parse::<usize>().ok().and_then(|i| array.get(i)).map(|v| (v.span().start, v))
                }
                _ => None,
            };
            let Some((start, next)) = next else { break };
            line = self.doc.line(start);
            value = next;
        }
        line
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => format!("the datetime {d}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(super) fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting an adjacent transposition as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]; three rows are enough.
    let mut before = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (prev[j] + 1).min(row[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, row);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let doc = Doc::new("a\nbc\n\nd");
        assert_eq!([0, 1, 2, 3, 4, 5, 6].map(|o| doc.line(o)), [1, 1, 2, 2, 2, 3, 4]);
    }

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("sise_ms", "size_ms"), 1);
        assert_eq!(edit_distance("sizemS", "size_ms"), 2);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn closest_suggests_only_likely_typos() {
        let keys = ["size_ms", "hop_ms", "gap_ms", "kind", "key"];
        assert_eq!(closest("sise_ms", keys), Some("size_ms"));
        assert_eq!(closest("kinf", keys), Some("kind"));
        assert_eq!(closest("color", keys), None);
    }

    #[test]
    fn one_of_lists_with_or() {
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
