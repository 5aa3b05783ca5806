//! The `file` source: JSON lines or CSV (RFC 4180: quoted fields, `""` escapes, CRLF or LF
//! line ends; no header, fields in schema order), read from a byte offset, so a restored
//! pipeline re-reads exactly what followed its checkpoint. The input is bounded: its end is
//! the end of the run, so a last line without a newline is the last record.
//!
//! Parsing is [`Decoder::decode`], a pure function of the bytes (no I/O), which the fuzz
//! target calls as the [`FileSource`] does. A record that does not fit the declared schema
//! (a missing or mistyped field, a number out of its type's range, a non-finite float) is
//! an error naming the file and line: nothing is silently dropped or turned into null.
//!
//! The position in a snapshot is the byte offset, the line number and a CRC-32C of the up to
//! [`TAIL`] bytes before the offset. Seeking checks both, so an input that was truncated or
//! replaced after a checkpoint is an error instead of a silently shorter or different run.
//!
//! With `parallelism = n`, subtask `k` reads records `r` (counting from 0, blank lines not
//! counted) with `r % n == k`: every subtask frames every record (finding where a CSV
//! record ends takes parsing its quotes, so no byte range can be cut without reading what
//! precedes it) but decodes only its own, and reports errors in its own. Its position adds
//! the number of records before the offset.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{Share, SourceError, SourceReader};
use crate::batch::{Batch, Column, Field, Schema, SchemaRef};
use crate::pipeline::spec::{FileFormat, FileSourceSpec};

/// Bytes before the read position covered by the position's checksum.
pub const TAIL: usize = 4096;

/// Bytes read from the file at a time.
const READ_SIZE: usize = 1 << 16;

/// The UTF-8 byte order mark, skipped at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// A record that could not be decoded: the line it starts on, and why.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct DecodeError {
    /// 1-based line number in the file (counting from [`Chunk::first_line`]).
    pub line: u64,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Bytes of a file to decode.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The bytes, starting at a record boundary.
    pub bytes: &'a [u8],
    /// The number of the line `bytes` starts on.
    pub first_line: u64,
    /// `bytes` start at the start of the file (a byte order mark there is skipped).
    pub starts_file: bool,
    /// `bytes` end at the end of the file: a last record without a line end is complete.
    /// Otherwise an unterminated last record is left for a later chunk with more bytes.
    pub ends_file: bool,
}

/// How far [`Decoder::decode`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Records appended to the batch.
    pub records: usize,
    /// Bytes of the chunk consumed: whole records and the blank lines between them. The
    /// next chunk starts here.
    pub bytes: usize,
    /// Line ends (`\n`) in the consumed bytes.
    pub lines: u64,
    /// Records in the consumed bytes, in the share or not.
    pub framed: u64,
}

/// Decodes records of one format into batches. It holds only reusable scratch space, so a
/// call's result depends on its arguments alone.
pub struct Decoder {
    format: FileFormat,
    csv: csv_core::Reader,
    /// Unescaped field bytes of one CSV record, and where each field ends.
    fields: Vec<u8>,
    ends: Vec<usize>,
    /// Which fields a JSON object had.
    seen: Vec<bool>,
}

impl Decoder {
    /// A decoder of `format`.
    pub fn new(format: FileFormat) -> Decoder {
        Decoder {
            format,
            csv: csv_core::Reader::new(),
            fields: vec![0; 256],
            ends: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Decode up to `max` records of `chunk` and append them to `batch` (whose schema says
    /// the fields and their types), column by column, without allocating per record.
    ///
    /// Blank lines are skipped. On error `batch` may hold part of the bad record and must be
    /// dropped.
    pub fn decode(
        &mut self,
        chunk: Chunk<'_>,
        max: usize,
        batch: &mut Batch,
    ) -> Result<Decoded, DecodeError> {
        self.decode_share(chunk, Share::WHOLE, 0, max, batch)
    }

    /// [`Decoder::decode`] of the records in `share` only, the chunk's first record being
    /// record number `first_record`: the others are framed and skipped, and not checked
    /// against the schema (their own share does that). `max` counts records appended.
    pub fn decode_share(
        &mut self,
        chunk: Chunk<'_>,
        share: Share,
        first_record: u64,
        max: usize,
        batch: &mut Batch,
    ) -> Result<Decoded, DecodeError> {
        let skip = if chunk.starts_file && chunk.bytes.starts_with(BOM) { BOM.len() } else { 0 };
        let before = batch.len();
        let schema = batch.schema().clone();
        let mut at = Framing { share, record: first_record, kept: 0, done: skip };
        match self.format {
            FileFormat::JsonLines => self.json(&schema, chunk, &mut at, max, batch.columns_mut())?,
            FileFormat::Csv => self.csv(&schema, chunk, &mut at, max, batch.columns_mut())?,
        };
        let framed = at.record - first_record;
        // A BOM alone is no progress: the next chunk starts at the file's start again.
        let bytes = if framed == 0 && at.done == skip && !chunk.ends_file { 0 } else { at.done };
        batch.set_len(before + at.kept);
        Ok(Decoded { records: at.kept, bytes, lines: count_lines(&chunk.bytes[..bytes]), framed })
    }

    fn json(
        &mut self,
        schema: &Schema,
        chunk: Chunk<'_>,
        f: &mut Framing,
        max: usize,
        columns: &mut [Column],
    ) -> Result<(), DecodeError> {
        let bytes = chunk.bytes;
        let mut line = chunk.first_line;
        while f.kept < max && f.done < bytes.len() {
            let at = f.done;
            let (text, next) = match bytes[at..].iter().position(|&b| b == b'\n') {
                Some(n) => (&bytes[at..at + n], at + n + 1),
                None if chunk.ends_file => (&bytes[at..], bytes.len()),
                None => break, // the rest of this line is in a later chunk
            };
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if !text.iter().all(u8::is_ascii_whitespace) {
                if f.share.owns(f.record) {
                    self.seen.clear();
                    self.seen.resize(schema.len(), false);
                    json_record(schema, columns, &mut self.seen, text)
                        .map_err(|message| DecodeError { line, message })?;
                    f.kept += 1;
                }
                f.record += 1;
            }
            f.done = next;
            line += 1;
        }
        Ok(())
    }

    fn csv(
        &mut self,
        schema: &Schema,
        chunk: Chunk<'_>,
        f: &mut Framing,
        max: usize,
        columns: &mut [Column],
    ) -> Result<(), DecodeError> {
        let bytes = chunk.bytes;
        self.csv.reset();
        // csv-core strips a byte order mark from the first input it sees, wherever that is
        // in the file: mark the reader as used (with no room for output it consumes nothing)
        // and strip one only at the start of the file, in `decode`.
        let _ = self.csv.read_record(b" ", &mut [], &mut []);
        // One more end than the schema has fields, to tell "too many" from "just right".
        self.ends.resize(schema.len() + 1, 0);
        while f.kept < max && f.done < bytes.len() {
            let done = f.done;
            let step = self.csv_step(&bytes[done..], chunk.ends_file);
            let at = |len: usize| {
                let blank = bytes[done..done + len].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                chunk.first_line + count_lines(&bytes[..done + blank])
            };
            let (len, fields) = match step {
                CsvStep::Record { len, fields } => (len, fields),
                CsvStep::Blank { len } => {
                    f.done += len;
                    continue;
                }
                CsvStep::Incomplete => break,
                CsvStep::TooMany { len } => {
                    let message = format!("more than {} fields", schema.len());
                    return Err(DecodeError { line: at(len), message });
                }
                CsvStep::Unterminated => {
                    let message = "a quoted field is not closed before the end of the file".to_owned();
                    return Err(DecodeError { line: at(bytes.len() - done), message });
                }
            };
            if f.share.owns(f.record) {
                csv_record(schema, columns, &self.fields, &self.ends[..fields])
                    .map_err(|message| DecodeError { line: at(len), message })?;
                f.kept += 1;
            }
            f.record += 1;
            f.done += len;
        }
        Ok(())
    }

    /// Parse one CSV record (after any blank lines) from `input` into `fields` and `ends`.
    fn csv_step(&mut self, input: &[u8], ends_file: bool) -> CsvStep {
        use csv_core::ReadRecordResult as R;
        let (mut nin, mut nout, mut nend) = (0, 0, 0);
        loop {
            let eof = nin == input.len();
            if eof && !ends_file {
                return CsvStep::Incomplete;
            }
            if eof && input.iter().all(|&b| b == b'\r' || b == b'\n') {
                return CsvStep::Blank { len: nin };
            }
            // At the end of the file, end the last record's line: if the record is still
            // open after that, a quoted field never closed (csv-core would take the rest of
            // the file as its content, and this source reports it instead).
            let feed = if eof { b"\n" } else { &input[nin..] };
            let (result, i, o, e) =
                self.csv.read_record(feed, &mut self.fields[nout..], &mut self.ends[nend..]);
            if !eof {
                nin += i;
            }
            nout += o;
            nend += e;
            match result {
                R::Record => return CsvStep::Record { len: nin, fields: nend },
                R::OutputEndsFull => return CsvStep::TooMany { len: nin },
                R::OutputFull => self.fields.resize(self.fields.len() * 2, 0),
                R::InputEmpty | R::End if eof => return CsvStep::Unterminated,
                R::InputEmpty | R::End => {}
            }
        }
    }
}

impl Decoder {
    /// One CSV record from a message's `payload` (a line break at its end is optional) into
    /// `columns`, its fields as `schema` says. An error names what is wrong with it.
    pub(crate) fn csv_message(
        &mut self,
        schema: &Schema,
        columns: &mut [Column],
        payload: &[u8],
    ) -> Result<(), String> {
        self.csv.reset();
        // As in `csv`: csv-core would strip a byte order mark from its first input.
        let _ = self.csv.read_record(b" ", &mut [], &mut []);
        self.ends.resize(schema.len() + 1, 0);
        match self.csv_step(payload, true) {
            CsvStep::Record { len, fields } => {
                if !payload[len..].iter().all(u8::is_ascii_whitespace) {
                    return Err("more than one CSV record".into());
                }
                csv_record(schema, columns, &self.fields, &self.ends[..fields])
            }
            CsvStep::Blank { .. } => Err("an empty payload".into()),
            CsvStep::TooMany { .. } => Err(format!("more than {} fields", schema.len())),
            CsvStep::Unterminated | CsvStep::Incomplete => Err("a quoted field is not closed".into()),
        }
    }
}

/// How far a chunk has been decoded.
struct Framing {
    share: Share,
    /// The number of the next record, in the share or not.
    record: u64,
    /// Records of the share appended.
    kept: usize,
    /// Bytes consumed.
    done: usize,
}

/// What [`Decoder::csv_step`] found.
enum CsvStep {
    /// A record of `fields` fields, `len` bytes with its line end.
    Record { len: usize, fields: usize },
    /// Blank lines to the end of the file.
    Blank { len: usize },
    /// The record continues past the chunk.
    Incomplete,
    /// More fields than the schema has, in the first `len` bytes.
    TooMany { len: usize },
    /// The file ends inside a quoted field.
    Unterminated,
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Push one CSV record, its fields unescaped in `fields` and ending at `ends`.
fn csv_record(schema: &Schema, columns: &mut [Column], fields: &[u8], ends: &[usize]) -> Result<(), String> {
    if ends.len() < schema.len() {
        return Err(format!("missing field \"{}\"", schema.fields()[ends.len()].name));
    }
    if ends.len() > schema.len() {
        return Err(format!("more than {} fields", schema.len()));
    }
    let mut start = 0;
    for ((field, column), &end) in schema.fields().iter().zip(columns.iter_mut()).zip(ends) {
        let raw = &fields[start..end];
        start = end;
        let text =
            std::str::from_utf8(raw).map_err(|_| format!("field \"{}\" is not valid UTF-8", field.name))?;
        push_text(field, column, text)?;
    }
    Ok(())
}

/// Push a CSV field: strings as they are, other types with surrounding spaces ignored.
fn push_text(field: &Field, column: &mut Column, text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    let bad = || format!("field \"{}\" should be {}, found \"{text}\"", field.name, field.ty);
    match column {
        Column::Str(c) => c.push(text),
        Column::Bool(c) => c.push(trimmed.parse().map_err(|_| bad())?),
        Column::Int(c) => c.push(trimmed.parse().map_err(|e: std::num::ParseIntError| {
            use std::num::IntErrorKind::{NegOverflow, PosOverflow};
            match e.kind() {
                PosOverflow | NegOverflow => out_of_range(field, trimmed),
                _ => bad(),
            }
        })?),
        Column::Float(c) => {
            let v: f64 = trimmed.parse().map_err(|_| bad())?;
            if !v.is_finite() {
                // Rust reads "1e400" as infinity and accepts "NaN" and "inf": neither is a
                // value Weir can write back out.
                return Err(if trimmed.bytes().any(|b| b.is_ascii_digit()) {
                    out_of_range(field, trimmed)
                } else {
                    format!("field \"{}\" should be a finite float, found \"{trimmed}\"", field.name)
                });
            }
            c.push(v)
        }
    }
    Ok(())
}

fn out_of_range(field: &Field, number: impl std::fmt::Display) -> String {
    format!("field \"{}\" is out of range for {}: {number}", field.name, field.ty)
}

/// Push one JSON object's fields, each straight into its column; keys not in the schema are
/// ignored.
pub(crate) fn json_record(
    schema: &Schema,
    columns: &mut [Column],
    seen: &mut [bool],
    text: &[u8],
) -> Result<(), String> {
    let mut field = None;
    let mut own = None;
    let mut de = serde_json::Deserializer::from_slice(text);
    let seed = ObjectSeed { schema, columns, seen, field: &mut field, error: &mut own };
    let result = seed.deserialize(&mut de).and_then(|()| de.end());
    result.map_err(|e| {
        if let Some(message) = own {
            return message;
        }
        // serde_json's own messages end in the position; a line is one record, so the
        // column is what locates it.
        let text = e.to_string();
        let text =
            text.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&text);
        match field.map(|i| &schema.fields()[i]) {
            // serde_json refuses a number beyond f64 (1e400) while reading it.
            Some(field) if text == "number out of range" => {
                out_of_range(field, "the number does not fit a 64-bit float")
            }
            Some(field) if e.classify() == serde_json::error::Category::Data => {
                format!("field \"{}\": {text}", field.name)
            }
            _ => format!("invalid JSON at column {}: {text}", e.column()),
        }
    })
}

/// Deserializes a JSON object into the columns. Its errors go to `error` (serde_json would
/// add a position to them).
struct ObjectSeed<'a> {
    schema: &'a Schema,
    columns: &'a mut [Column],
    seen: &'a mut [bool],
    /// The field whose value is being read.
    field: &'a mut Option<usize>,
    error: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = self.schema.fields();
        while let Some(key) = map.next_key_seed(KeySeed(fields))? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut self.seen[i], true) {
                return Err(fail(self.error, format!("field \"{}\" appears twice", fields[i].name)));
            }
            *self.field = Some(i);
            map.next_value_seed(ValueSeed {
                field: &fields[i],
                column: &mut self.columns[i],
                error: self.error,
            })?;
            *self.field = None;
        }
        match self.seen.iter().position(|seen| !seen) {
            Some(i) => Err(fail(self.error, format!("missing field \"{}\"", fields[i].name))),
            None => Ok(()),
        }
    }
}

/// Record `message` as the error and return an error for serde to unwind with.
fn fail<E: de::Error>(slot: &mut Option<String>, message: String) -> E {
    let error = E::custom(&message);
    *slot = Some(message);
    error
}

/// A key of the object: the index of its field, or `None` for a key not in the schema.
struct KeySeed<'a>(&'a [Field]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f.name == key))
    }
}

/// One value, pushed into its field's column.
struct ValueSeed<'a> {
    field: &'a Field,
    column: &'a mut Column,
    error: &'a mut Option<String>,
}

impl ValueSeed<'_> {
    fn wrong<E: de::Error>(self, found: impl std::fmt::Display) -> E {
        let message = format!("field \"{}\" should be {}, found {found}", self.field.name, self.field.ty);
        fail(self.error, message)
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {}", self.field.ty)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.column {
            Column::Bool(c) => {
                c.push(v);
                Ok(())
            }
            _ => Err(self.wrong(v)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match self.column {
            Column::Int(c) => {
                c.push(v);
                Ok(())
            }
            Column::Float(c) => {
                c.push(v as f64);
                Ok(())
            }
            _ => Err(self.wrong(v)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match self.column {
            Column::Int(c) => match i64::try_from(v) {
                Ok(v) => {
                    c.push(v);
                    Ok(())
                }
                Err(_) => Err(fail(self.error, out_of_range(self.field, v))),
            },
            Column::Float(c) => {
                c.push(v as f64);
                Ok(())
            }
            _ => Err(self.wrong(v)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.column {
            // serde_json refuses numbers beyond f64; this guards other deserializers.
            Column::Float(_) if !v.is_finite() => Err(fail(self.error, out_of_range(self.field, v))),
            Column::Float(c) => {
                c.push(v);
                Ok(())
            }
            // An integer beyond i64 and u64 arrives as a float.
            Column::Int(_) if v.fract() == 0.0 && v.abs() >= 2f64.powi(63) => {
                Err(fail(self.error, out_of_range(self.field, v)))
            }
            _ => Err(self.wrong(format_args!("{v:?}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.column {
            Column::Str(c) => {
                c.push(v);
                Ok(())
            }
            _ => Err(self.wrong(format_args!("{v:?}"))),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.wrong("null"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.wrong("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.wrong("an object"))
    }
}

/// Reads a file of records.
pub struct FileSource {
    path: PathBuf,
    schema: SchemaRef,
    decoder: Decoder,
    file: Option<File>,
    /// Bytes read from the file: `buf[start..]` is not decoded yet, and the up to `TAIL`
    /// bytes before `start` are kept for the position's checksum.
    buf: Vec<u8>,
    start: usize,
    /// The file has no bytes after `buf`.
    eof: bool,
    /// File offset of `buf[start]`, and its 1-based line number.
    offset: u64,
    line_no: u64,
    /// The records this reader decodes, and the number of the record at `offset`.
    share: Share,
    record: u64,
}

/// Bytes of an encoded position: offset, line number, checksum; then, for a share of a
/// source with `parallelism > 1`, the record number.
const POSITION_LEN: usize = 8 + 8 + 4;

impl FileSource {
    /// A reader of `share`'s records at the start of the file (opened on first read).
    pub fn new(spec: &FileSourceSpec, share: Share) -> FileSource {
        FileSource {
            share,
            record: 0,
            path: spec.path.clone(),
            schema: spec.schema.clone(),
            decoder: Decoder::new(spec.format),
            file: None,
            buf: Vec::new(),
            start: 0,
            eof: false,
            offset: 0,
            line_no: 1,
        }
    }

    fn io_err(&self, doing: &str, e: std::io::Error) -> SourceError {
        SourceError(format!("cannot {doing} {}: {e}", self.path.display()))
    }

    /// The kept bytes just before `offset`.
    fn tail(&self) -> &[u8] {
        let keep = TAIL.min(usize::try_from(self.offset).unwrap_or(usize::MAX));
        &self.buf[self.start - keep..self.start]
    }

    /// Drop decoded bytes (but the tail) and read more; at the end of the file set `eof`.
    fn fill(&mut self) -> Result<(), SourceError> {
        let drop = self.start - self.tail().len();
        self.buf.drain(..drop);
        self.start -= drop;
        if self.file.is_none() {
            self.file = Some(File::open(&self.path).map_err(|e| self.io_err("open", e))?);
        }
        let file = self.file.as_mut().expect("opened above");
        let len = self.buf.len();
        self.buf.resize(len + READ_SIZE, 0);
        let read = loop {
            match file.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(SourceError(format!("cannot read {}: {e}", self.path.display())));
                }
            }
        };
        self.buf.truncate(len + read);
        self.eof = read == 0;
        Ok(())
    }
}

impl SourceReader for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        let mut batch = Batch::with_capacity(self.schema.clone(), max);
        while batch.len() < max {
            if self.start == self.buf.len() && self.eof {
                break;
            }
            let chunk = Chunk {
                bytes: &self.buf[self.start..],
                first_line: self.line_no,
                starts_file: self.offset == 0,
                ends_file: self.eof,
            };
            let decoded = self
                .decoder
                .decode_share(chunk, self.share, self.record, max - batch.len(), &mut batch)
                .map_err(|e| SourceError(format!("{} {e}", self.path.display())))?;
            self.start += decoded.bytes;
            self.offset += decoded.bytes as u64;
            self.line_no += decoded.lines;
            self.record += decoded.framed;
            if batch.len() == max {
                break;
            }
            if self.eof && self.start < self.buf.len() {
                // At the end of the file the decoder takes every byte or fails: stop rather
                // than wait for bytes that will not come.
                let (path, line) = (self.path.display(), self.line_no);
                return Err(SourceError(format!("{path} line {line}: the end of the file was not decoded")));
            }
            if !self.eof {
                self.fill()?;
            }
        }
        Ok(if batch.is_empty() { None } else { Some(batch) })
    }

    fn position(&self) -> Vec<u8> {
        let crc = crc32c::crc32c(self.tail());
        let mut position =
            [&self.offset.to_be_bytes()[..], &self.line_no.to_be_bytes(), &crc.to_be_bytes()].concat();
        if self.share.count > 1 {
            position.extend(self.record.to_be_bytes());
        }
        position
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let path = self.path.display();
        let (position, record) = match (position.split_at_checked(POSITION_LEN), self.share.count) {
            (Some((position, [])), 1) => (position, 0),
            (Some((position, record)), count) if count > 1 && record.len() == 8 => {
                (position, u64::from_be_bytes(record.try_into().expect("8 bytes")))
            }
            _ => {
                let n = position.len();
                return Err(SourceError(format!("{path}: bad position of {n} bytes in snapshot")));
            }
        };
        let offset = u64::from_be_bytes(position[..8].try_into().expect("8 bytes"));
        let line_no = u64::from_be_bytes(position[8..16].try_into().expect("8 bytes"));
        let crc = u32::from_be_bytes(position[16..].try_into().expect("4 bytes"));
        let mut file = File::open(&self.path).map_err(|e| self.io_err("open", e))?;
        let len = file.metadata().map_err(|e| self.io_err("read the size of", e))?.len();
        if len < offset {
            return Err(SourceError(format!(
                "{path} is shorter ({len} bytes) than the position of the last checkpoint ({offset} bytes); \
                 it was truncated or replaced"
            )));
        }
        let keep = TAIL.min(usize::try_from(offset).unwrap_or(usize::MAX));
        let mut tail = vec![0; keep];
        file.seek(SeekFrom::Start(offset - keep as u64))
            .and_then(|_| file.read_exact(&mut tail))
            .map_err(|e| self.io_err("read", e))?;
        if crc32c::crc32c(&tail) != crc {
            return Err(SourceError(format!(
                "{path} differs from the file read before the last checkpoint (the {keep} bytes before \
                 its position, {offset}, changed); it was replaced or rewritten"
            )));
        }
        // The file is left just after the tail, at `offset`: reading continues from there.
        self.file = Some(file);
        self.buf = tail;
        self.start = keep;
        self.eof = false;
        self.offset = offset;
        self.line_no = line_no;
        self.record = record;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::batch::{DataType, Value};
    use crate::connectors::encode::encode;
    use crate::pipeline::spec::OutputFormat;

    fn schema_of(fields: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(fields.iter().map(|&(n, t)| Field::new(n, t)).collect()))
    }

    fn sensor_schema() -> SchemaRef {
        schema_of(&[("sensor", DataType::Str), ("v", DataType::Float)])
    }

    fn spec(path: PathBuf, format: FileFormat) -> FileSourceSpec {
        FileSourceSpec { path, format, schema: sensor_schema(), batch_size: 2 }
    }

    /// Every record of `path`, read `max` at a time.
    fn read_all(source: &mut FileSource, max: usize) -> Result<Vec<Vec<Value>>, SourceError> {
        let mut rows = Vec::new();
        while let Some(batch) = source.next_batch(max)? {
            assert!(batch.len() <= max);
            rows.extend((0..batch.len()).map(|i| batch.row(i)));
        }
        Ok(rows)
    }

    fn read_file(path: &Path, format: FileFormat, text: &str) -> Result<Vec<Vec<Value>>, SourceError> {
        std::fs::write(path, text).unwrap();
        read_all(&mut FileSource::new(&spec(path.to_owned(), format), Share::WHOLE), 3)
    }

    /// Decode `bytes` whole.
    fn decode_all(
        format: FileFormat,
        schema: SchemaRef,
        bytes: &[u8],
    ) -> Result<Vec<Vec<Value>>, DecodeError> {
        let mut batch = Batch::with_capacity(schema, 0);
        let chunk = Chunk { bytes, first_line: 1, starts_file: true, ends_file: true };
        let decoded = Decoder::new(format).decode(chunk, usize::MAX, &mut batch)?;
        assert_eq!(decoded.bytes, bytes.len(), "everything consumed at the end of the file");
        Ok((0..batch.len()).map(|i| batch.row(i)).collect())
    }

    fn row(sensor: &str, v: f64) -> Vec<Value> {
        vec![Value::Str(sensor.into()), Value::Float(v)]
    }

    #[test]
    fn reads_json_lines_and_resumes_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"sensor\":\"a\",\"v\":1.5}\n\n{\"sensor\":\"b\",\"v\":2}\n{\"sensor\":\"c\",\"v\":3}\n",
        )
        .unwrap();
        let mut s = FileSource::new(&spec(path.clone(), FileFormat::JsonLines), Share::WHOLE);
        let first = s.next_batch(2).unwrap().unwrap();
        assert_eq!(first.row(1), row("b", 2.0));
        let pos = s.position();
        let mut t = FileSource::new(&spec(path, FileFormat::JsonLines), Share::WHOLE);
        t.seek(&pos).unwrap();
        assert_eq!(t.next_batch(5).unwrap().unwrap().row(0), row("c", 3.0));
        assert_eq!(t.next_batch(5).unwrap(), None);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let err = read_file(&path, FileFormat::Csv, "a,1.0\nb,x\n").unwrap_err();
        assert_eq!(err.0, format!("{} line 2: field \"v\" should be float, found \"x\"", path.display()));
    }

    #[test]
    fn a_last_line_without_a_line_end_is_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("in.jsonl");
        let csv = dir.path().join("in.csv");
        let one = |s: &str| vec![row(s, 1.0)];
        assert_eq!(read_file(&json, FileFormat::JsonLines, "{\"sensor\":\"a\",\"v\":1}").unwrap(), one("a"));
        assert_eq!(read_file(&csv, FileFormat::Csv, "a,1").unwrap(), one("a"));
        assert_eq!(read_file(&csv, FileFormat::Csv, "\"a\",1").unwrap(), one("a"));
        let two = vec![row("a", 1.0), row("b", 2.0)];
        assert_eq!(
            read_file(
                &json,
                FileFormat::JsonLines,
                "{\"sensor\":\"a\",\"v\":1}\r\n{\"sensor\":\"b\",\"v\":2}"
            )
            .unwrap(),
            two
        );
        assert_eq!(read_file(&csv, FileFormat::Csv, "a,1\r\nb,2").unwrap(), two);
        // Blank lines at the end are no record.
        assert_eq!(read_file(&csv, FileFormat::Csv, "a,1\n\n\r\n").unwrap(), one("a"));
        assert_eq!(
            read_file(&json, FileFormat::JsonLines, "{\"sensor\":\"a\",\"v\":1}\n  \n").unwrap(),
            one("a")
        );
    }

    #[test]
    fn quoted_csv_fields_are_unquoted() {
        let text = "\"a,b\",1\n\"say \"\"hi\"\"\",2\r\n\"two\nlines\",3\n\"\",4\n\" 5\",\" 5 \"\n";
        assert_eq!(
            decode_all(FileFormat::Csv, sensor_schema(), text.as_bytes()).unwrap(),
            vec![
                row("a,b", 1.0),
                row("say \"hi\"", 2.0),
                row("two\nlines", 3.0),
                row("", 4.0),
                row(" 5", 5.0)
            ]
        );
    }

    #[test]
    fn weirs_own_csv_output_reads_back_identically() {
        let schema = schema_of(&[
            ("s", DataType::Str),
            ("i", DataType::Int),
            ("f", DataType::Float),
            ("b", DataType::Bool),
            ("t", DataType::Str),
        ]);
        let strings = [
            "\u{feff}bom first",
            "a,b",
            "say \"hi\"",
            "\"",
            ",",
            "",
            " padded ",
            "plain",
            "ünï,cödé",
            "cr\rlf\r\n",
        ];
        let mut batch = Batch::with_capacity(schema.clone(), strings.len());
        for (k, s) in strings.iter().enumerate() {
            let k = k as i64;
            let f = [0.1, -2.5e-300, 1e300, 0.0, 123456.789][k as usize % 5];
            let ints = [0, i64::MIN, i64::MAX, -7];
            batch.push_row(&[
                Value::Str((*s).into()),
                Value::Int(ints[k as usize % 4]),
                Value::Float(f),
                Value::Bool(k % 2 == 0),
                Value::Str(strings[strings.len() - 1 - k as usize].into()),
            ]);
        }
        let mut out = Vec::new();
        encode(&batch, OutputFormat { encoding: FileFormat::Csv, float_precision: None }, &mut out);
        let rows = decode_all(FileFormat::Csv, schema, &out).unwrap();
        assert_eq!(rows, (0..batch.len()).map(|i| batch.row(i)).collect::<Vec<_>>());

        // A lone string column: an empty string must not become a skipped blank line.
        let lone = schema_of(&[("s", DataType::Str)]);
        let mut batch = Batch::with_capacity(lone.clone(), 3);
        for s in ["a", "", "b"] {
            batch.push_row(&[Value::Str(s.into())]);
        }
        let mut out = Vec::new();
        encode(&batch, OutputFormat { encoding: FileFormat::Csv, float_precision: None }, &mut out);
        assert_eq!(decode_all(FileFormat::Csv, lone, &out).unwrap().len(), 3);
    }

    #[test]
    fn numbers_that_do_not_fit_their_type_are_errors() {
        let ints = schema_of(&[("n", DataType::Int)]);
        let floats = schema_of(&[("x", DataType::Float)]);
        let csv = |schema: &SchemaRef, text: &str| {
            decode_all(FileFormat::Csv, schema.clone(), format!("1\n{text}\n").as_bytes()).unwrap_err()
        };
        let json = |schema: &SchemaRef, key: &str, text: &str| {
            let input = format!("{{\"{key}\":1}}\n{{\"{key}\":{text}}}\n");
            decode_all(FileFormat::JsonLines, schema.clone(), input.as_bytes()).unwrap_err()
        };
        let at2 = |message: &str| DecodeError { line: 2, message: message.into() };
        for text in ["1e400", "-1e400", "1E+999"] {
            assert_eq!(csv(&floats, text), at2(&format!("field \"x\" is out of range for float: {text}")));
            assert_eq!(
                json(&floats, "x", text),
                at2("field \"x\" is out of range for float: the number does not fit a 64-bit float")
            );
        }
        for text in ["NaN", "nan", "inf", "-inf", "+infinity", "Infinity", "-INFINITY"] {
            assert_eq!(
                csv(&floats, text),
                at2(&format!("field \"x\" should be a finite float, found \"{text}\""))
            );
            let err = json(&floats, "x", text);
            assert_eq!(err.line, 2);
            assert!(err.message.starts_with("invalid JSON at column "), "{text}: {err:?}");
        }
        for text in ["9223372036854775808", "-9223372036854775809", "99999999999999999999999"] {
            assert_eq!(csv(&ints, text), at2(&format!("field \"n\" is out of range for int: {text}")));
            let err = json(&ints, "n", text);
            assert_eq!(err.line, 2);
            assert!(err.message.starts_with("field \"n\" is out of range for int: "), "{text}: {err:?}");
        }
        assert_eq!(json(&ints, "n", "1.5"), at2("field \"n\" should be int, found 1.5"));
        assert_eq!(
            json(&ints, "n", "1e400"),
            at2("field \"n\" is out of range for int: the number does not fit a 64-bit float")
        );
        // The extremes that fit are read.
        let text = format!("{}\n{}\n", i64::MIN, i64::MAX);
        let rows = decode_all(FileFormat::Csv, ints.clone(), text.as_bytes()).unwrap();
        assert_eq!(rows, vec![vec![Value::Int(i64::MIN)], vec![Value::Int(i64::MAX)]]);
        let rows = decode_all(FileFormat::JsonLines, floats, b"{\"x\":1.7976931348623157e308}").unwrap();
        assert_eq!(rows, vec![vec![Value::Float(f64::MAX)]]);
    }

    #[test]
    fn records_that_do_not_fit_the_schema_are_errors_naming_the_line() {
        let s = sensor_schema();
        let csv = |text: &str| decode_all(FileFormat::Csv, s.clone(), text.as_bytes()).unwrap_err();
        let json = |text: &str| decode_all(FileFormat::JsonLines, s.clone(), text.as_bytes()).unwrap_err();
        let at = |line: u64, message: &str| DecodeError { line, message: message.into() };
        assert_eq!(csv("a,1\n\nb\n"), at(3, "missing field \"v\""));
        assert_eq!(csv("a,1\nb,2,3\n"), at(2, "more than 2 fields"));
        assert_eq!(csv("a,1,\n"), at(1, "more than 2 fields"));
        assert_eq!(
            csv("a,1\n\"b,2\nc,3\n"),
            at(2, "a quoted field is not closed before the end of the file")
        );
        assert_eq!(csv("a,1\n\"x\ny\",2\nb,z\n"), at(4, "field \"v\" should be float, found \"z\""));
        let bad_utf8 = decode_all(FileFormat::Csv, s.clone(), b"\xef\xbb\xbfa,1\nb\xff,2\n").unwrap_err();
        assert_eq!(bad_utf8, at(2, "field \"sensor\" is not valid UTF-8"));
        assert_eq!(json("{\"sensor\":\"a\"}"), at(1, "missing field \"v\""));
        assert_eq!(json("\n{\"sensor\":\"a\",\"v\":1,\"v\":2}"), at(2, "field \"v\" appears twice"));
        assert_eq!(json("{\"sensor\":1,\"v\":1}"), at(1, "field \"sensor\" should be string, found 1"));
        assert_eq!(json("{\"sensor\":\"a\",\"v\":null}"), at(1, "field \"v\" should be float, found null"));
        assert_eq!(json("{\"sensor\":\"a\",\"v\":\"1\"}"), at(1, "field \"v\" should be float, found \"1\""));
        assert_eq!(
            json("[1,2]"),
            at(1, "invalid JSON at column 1: invalid type: sequence, expected a JSON object")
        );
        assert_eq!(
            json("{\"sensor\":\"a\",\"v\":1} x"),
            at(1, "invalid JSON at column 22: trailing characters")
        );
        // Keys not in the schema are ignored, in any order; a BOM starts the file.
        let rows = decode_all(
            FileFormat::JsonLines,
            s.clone(),
            "\u{feff}{\"v\":1,\"x\":[{}],\"sensor\":\"a\\n\"}".as_bytes(),
        );
        assert_eq!(rows.unwrap(), vec![row("a\n", 1.0)]);
    }

    /// Decoding in chunks cut anywhere gives the records of decoding whole: an unfinished
    /// record is left for the next chunk.
    #[test]
    fn any_chunking_decodes_the_same_records() {
        let csv = "\u{feff}a,1\r\n\r\n\"b,\"\"x\"\"\ny\",2\nc,3";
        let json =
            "\u{feff}{\"sensor\":\"a\",\"v\":1}\r\n\n{\"v\":2,\"sensor\":\"b\"}\n{\"sensor\":\"c\",\"v\":3}";
        for (format, text) in [(FileFormat::Csv, csv), (FileFormat::JsonLines, json)] {
            let bytes = text.as_bytes();
            let whole = decode_all(format, sensor_schema(), bytes).unwrap();
            assert_eq!(whole.len(), 3);
            for max in [1, 2, 5] {
                for step in 1..=bytes.len() {
                    let mut decoder = Decoder::new(format);
                    let (mut rows, mut at, mut line, mut end) = (Vec::new(), 0, 1, 0);
                    while at < bytes.len() {
                        end = (end + step).min(bytes.len()).max(at);
                        let chunk = Chunk {
                            bytes: &bytes[at..end],
                            first_line: line,
                            starts_file: at == 0,
                            ends_file: end == bytes.len(),
                        };
                        let mut batch = Batch::with_capacity(sensor_schema(), 0);
                        let d = decoder.decode(chunk, max, &mut batch).unwrap();
                        assert!(d.records <= max);
                        rows.extend((0..batch.len()).map(|i| batch.row(i)));
                        at += d.bytes;
                        line += d.lines;
                    }
                    assert_eq!(rows, whole, "{format:?}, chunks of {step}, max {max}");
                    assert_eq!(line, 1 + count_lines(bytes), "{format:?}");
                }
            }
        }
    }

    /// A file larger than one read, read in batches, each resumed from its position by a
    /// fresh source, gives the records in order exactly once.
    #[test]
    fn resuming_from_every_batch_position_gives_each_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("\"s,{i}\",{i}.5\r\n"));
        }
        text.push_str("last,0"); // no line end
        std::fs::write(&path, &text).unwrap();
        let mut source = FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE);
        let mut positions = vec![source.position()];
        let mut all = Vec::new();
        while let Some(batch) = source.next_batch(1000).unwrap() {
            all.extend((0..batch.len()).map(|i| batch.row(i)));
            positions.push(source.position());
        }
        assert_eq!(all.len(), 20_001);
        assert_eq!(all[12_345], row("s,12345", 12345.5));
        for (k, position) in positions.iter().enumerate() {
            let mut resumed = FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE);
            resumed.seek(position).unwrap();
            assert_eq!(read_all(&mut resumed, 777).unwrap(), all[(k * 1000).min(all.len())..], "batch {k}");
        }
        // A bad record is located by its line in the file, after a resume too.
        std::fs::write(&path, text.replace("\"s,15000\",15000.5", "\"s,15000\",x")).unwrap();
        let mut resumed = FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE);
        resumed.seek(&positions[12]).unwrap();
        let err = read_all(&mut resumed, 1000).unwrap_err();
        assert_eq!(err.0, format!("{} line 15001: field \"v\" should be float, found \"x\"", path.display()));
    }

    /// Each share of a file, read in batches each resumed from its position by a fresh
    /// source, holds records `r % count == index` of the whole, in order; bad records are
    /// reported by the share that holds them.
    #[test]
    fn shares_split_the_records_by_number_and_resume_from_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("\u{feff}");
        let mut json = String::new();
        for i in 0..5000 {
            csv.push_str(&format!("\"s,{i}\nx\",{i}.5\r\n"));
            json.push_str(&format!("{{\"sensor\":\"s{i}\",\"v\":{i}}}\n"));
            if i % 7 == 0 {
                csv.push('\n');
                json.push_str("  \n");
            }
        }
        for (format, text) in [(FileFormat::Csv, &csv), (FileFormat::JsonLines, &json)] {
            let path = dir.path().join("in");
            std::fs::write(&path, text).unwrap();
            let whole =
                read_all(&mut FileSource::new(&spec(path.clone(), format), Share::WHOLE), 1000).unwrap();
            assert_eq!(whole.len(), 5000);
            for count in [2, 3] {
                for index in 0..count {
                    let share = Share { index, count };
                    let mut rows = Vec::new();
                    let mut position = FileSource::new(&spec(path.clone(), format), share).position();
                    assert_eq!(position.len(), POSITION_LEN + 8);
                    loop {
                        let mut source = FileSource::new(&spec(path.clone(), format), share);
                        source.seek(&position).unwrap();
                        let Some(batch) = source.next_batch(333).unwrap() else { break };
                        rows.extend((0..batch.len()).map(|i| batch.row(i)));
                        position = source.position();
                    }
                    let mine: Vec<_> = whole.iter().skip(index).step_by(count).cloned().collect();
                    assert_eq!(rows, mine, "{format:?}, share {index} of {count}");
                }
            }
        }
        // Record 3 (line 4) is bad: share 1 of 2 reports it, share 0 does not hold it.
        let path = dir.path().join("bad.csv");
        std::fs::write(&path, "a,1\nb,2\nc,3\nd,x\ne,5\n").unwrap();
        let read = |index| {
            read_all(
                &mut FileSource::new(&spec(path.clone(), FileFormat::Csv), Share { index, count: 2 }),
                10,
            )
        };
        assert_eq!(read(0).unwrap(), [row("a", 1.0), row("c", 3.0), row("e", 5.0)]);
        assert_eq!(
            read(1).unwrap_err().0,
            format!("{} line 4: field \"v\" should be float, found \"x\"", path.display())
        );
        // A position of the whole is not one of a share, nor the other way round.
        let whole = FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE).position();
        let half =
            FileSource::new(&spec(path.clone(), FileFormat::Csv), Share { index: 0, count: 2 }).position();
        let bad = |n| Err(format!("{}: bad position of {n} bytes in snapshot", path.display()));
        let seek = |share, position: &[u8]| {
            FileSource::new(&spec(path.clone(), FileFormat::Csv), share).seek(position).map_err(|e| e.0)
        };
        assert_eq!(seek(Share { index: 1, count: 2 }, &whole), bad(20));
        assert_eq!(seek(Share::WHOLE, &half), bad(28));
    }

    #[test]
    fn seeking_into_a_truncated_or_replaced_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        let text: String = (0..1000).map(|i| format!("s{i},{i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut source = FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE);
        source.next_batch(600).unwrap().unwrap();
        let position = source.position();
        let offset = text.lines().take(600).map(|l| l.len() as u64 + 1).sum::<u64>();
        let seek = |contents: &[u8], position: &[u8]| {
            std::fs::write(&path, contents).unwrap();
            FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE)
                .seek(position)
                .map_err(|e| e.0)
        };
        assert_eq!(seek(text.as_bytes(), &position), Ok(()));
        assert_eq!(
            seek(&text.as_bytes()[..1200], &position),
            Err(format!(
                "{} is shorter (1200 bytes) than the position of the last checkpoint ({offset} bytes); \
                 it was truncated or replaced",
                path.display()
            ))
        );
        // Same length, one byte changed just before the position.
        let mut changed = text.clone().into_bytes();
        changed[offset as usize - 3] = b'0';
        assert_eq!(
            seek(&changed, &position),
            Err(format!(
                "{} differs from the file read before the last checkpoint (the 4096 bytes before its \
                 position, {offset}, changed); it was replaced or rewritten",
                path.display()
            ))
        );
        // Appended to: still the same file.
        assert_eq!(seek(format!("{text}more,1\n").as_bytes(), &position), Ok(()));
        assert_eq!(
            seek(text.as_bytes(), &position[..16]),
            Err(format!("{}: bad position of 16 bytes in snapshot", path.display()))
        );
        // A position at the very start has nothing to check but the file's existence.
        assert_eq!(
            seek(b"", &FileSource::new(&spec(path.clone(), FileFormat::Csv), Share::WHOLE).position()),
            Ok(())
        );
    }
}
