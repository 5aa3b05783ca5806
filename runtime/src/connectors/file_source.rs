//! The `file` source: JSON lines or CSV (no header, fields in schema order), read from a
//! byte offset, so a restored pipeline re-reads exactly what followed its checkpoint.
//! A line that does not fit the declared schema is an error naming the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use super::{SourceError, SourceReader};
use crate::batch::{Batch, Column, SchemaRef};
use crate::pipeline::spec::{FileFormat, FileSourceSpec};

/// Reads a file of records.
pub struct FileSource {
    path: PathBuf,
    format: FileFormat,
    schema: SchemaRef,
    reader: Option<BufReader<File>>,
    /// Byte offset of the next line, and its 1-based number.
    offset: u64,
    line_no: u64,
    line: String,
}

impl FileSource {
    /// A reader at the start of the file (opened on first read).
    pub fn new(spec: &FileSourceSpec) -> FileSource {
        FileSource {
            path: spec.path.clone(),
            format: spec.format,
            schema: spec.schema.clone(),
            reader: None,
            offset: 0,
            line_no: 1,
            line: String::new(),
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> SourceError {
        SourceError(format!("{} line {}: {what}", self.path.display(), self.line_no))
    }

    fn open(&mut self) -> Result<&mut BufReader<File>, SourceError> {
        if self.reader.is_none() {
            let mut file = File::open(&self.path)
                .map_err(|e| SourceError(format!("cannot open {}: {e}", self.path.display())))?;
            file.seek(SeekFrom::Start(self.offset))
                .map_err(|e| SourceError(format!("cannot seek in {}: {e}", self.path.display())))?;
            self.reader = Some(BufReader::with_capacity(1 << 16, file));
        }
        Ok(self.reader.as_mut().expect("opened above"))
    }

    fn push_json(&self, columns: &mut [Column], line: &str) -> Result<(), SourceError> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| self.err(format!("invalid JSON: {e}")))?;
        for (field, column) in self.schema.fields().iter().zip(columns.iter_mut()) {
            let value = object
                .get(&field.name)
                .ok_or_else(|| self.err(format!("missing field \"{}\"", field.name)))?;
            let bad = || self.err(format!("field \"{}\" should be {}, found {value}", field.name, field.ty));
            match column {
                Column::Bool(c) => c.push(value.as_bool().ok_or_else(bad)?),
                Column::Int(c) => c.push(value.as_i64().ok_or_else(bad)?),
                Column::Float(c) => c.push(value.as_f64().ok_or_else(bad)?),
                Column::Str(c) => c.push(value.as_str().ok_or_else(bad)?),
            }
        }
        Ok(())
    }

    fn push_csv(&self, columns: &mut [Column], line: &str) -> Result<(), SourceError> {
        let mut parts = line.split(',');
        for (field, column) in self.schema.fields().iter().zip(columns.iter_mut()) {
            let text =
                parts.next().ok_or_else(|| self.err(format!("missing field \"{}\"", field.name)))?.trim();
            let bad =
                || self.err(format!("field \"{}\" should be {}, found \"{text}\"", field.name, field.ty));
            match column {
                Column::Bool(c) => c.push(text.parse().map_err(|_| bad())?),
                Column::Int(c) => c.push(text.parse().map_err(|_| bad())?),
                Column::Float(c) => c.push(text.parse().map_err(|_| bad())?),
                Column::Str(c) => c.push(text),
            }
        }
        if parts.next().is_some() {
            return Err(self.err(format!("more than {} fields", self.schema.len())));
        }
        Ok(())
    }
}

impl SourceReader for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        let mut batch = Batch::with_capacity(self.schema.clone(), max);
        let mut n = 0;
        let mut line = std::mem::take(&mut self.line);
        while n < max {
            line.clear();
            let read = self.open()?.read_line(&mut line).map_err(|e| self.err(e))?;
            if read == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A last line without a newline may still be being written: treat it as
                // the end for now rather than read half a record.
                if let Some(reader) = self.reader.as_mut() {
                    reader.seek_relative(-(read as i64)).map_err(|e| self.err(e))?;
                }
                break;
            }
            let text = line.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                match self.format {
                    FileFormat::JsonLines => self.push_json(batch.columns_mut(), text)?,
                    FileFormat::Csv => self.push_csv(batch.columns_mut(), text)?,
                }
                n += 1;
            }
            self.offset += read as u64;
            self.line_no += 1;
        }
        self.line = line;
        batch.set_len(n);
        Ok(if n == 0 { None } else { Some(batch) })
    }

    fn position(&self) -> Vec<u8> {
        [self.offset.to_be_bytes(), self.line_no.to_be_bytes()].concat()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let bad = || {
            SourceError(format!(
                "{}: bad position of {} bytes in snapshot",
                self.path.display(),
                position.len()
            ))
        };
        let offset: [u8; 8] = position.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let line_no: [u8; 8] = position.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        self.offset = u64::from_be_bytes(offset);
        self.line_no = u64::from_be_bytes(line_no);
        self.reader = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::{DataType, Field, Schema, Value};

    fn spec(path: PathBuf, format: FileFormat) -> FileSourceSpec {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Str),
            Field::new("v", DataType::Float),
        ]));
        FileSourceSpec { path, format, schema, batch_size: 2 }
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
        let mut s = FileSource::new(&spec(path.clone(), FileFormat::JsonLines));
        let first = s.next_batch(2).unwrap().unwrap();
        assert_eq!(first.row(1), vec![Value::Str("b".into()), Value::Float(2.0)]);
        let pos = s.position();
        let mut t = FileSource::new(&spec(path, FileFormat::JsonLines));
        t.seek(&pos).unwrap();
        assert_eq!(t.next_batch(5).unwrap().unwrap().row(0), vec![Value::Str("c".into()), Value::Float(3.0)]);
        assert_eq!(t.next_batch(5).unwrap(), None);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, "a,1.0\nb,x\n").unwrap();
        let mut s = FileSource::new(&spec(path.clone(), FileFormat::Csv));
        let err = s.next_batch(10).unwrap_err();
        assert_eq!(err.0, format!("{} line 2: field \"v\" should be float, found \"x\"", path.display()));
    }
}
