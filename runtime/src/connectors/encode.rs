//! Encoding records as output lines: CSV (fields in schema order, no header) or JSON lines;
//! floats with a fixed number of decimals when `float_precision` is set, else the shortest
//! form that reads back exactly. Writes into one buffer: no allocation per record.

use std::io::Write as _;

use crate::batch::{Batch, Column};
use crate::pipeline::spec::{FileFormat, OutputFormat};

/// Append `batch` to `out` as lines in `format`.
pub fn encode(batch: &Batch, format: OutputFormat, out: &mut Vec<u8>) {
    let columns = batch.columns();
    let names: Vec<&str> = batch.schema().fields().iter().map(|f| f.name.as_str()).collect();
    for row in 0..batch.len() {
        if format.encoding == FileFormat::JsonLines {
            out.push(b'{');
        }
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if format.encoding == FileFormat::JsonLines {
                json_string(names[i], out);
                out.push(b':');
            }
            match column {
                Column::Bool(c) => out.extend_from_slice(if c[row] { b"true" } else { b"false" }),
                Column::Int(c) => out.extend_from_slice(itoa::Buffer::new().format(c[row]).as_bytes()),
                Column::Float(c) => float(c[row], format, out),
                Column::Str(c) => match format.encoding {
                    FileFormat::JsonLines => json_string(c.get(row), out),
                    FileFormat::Csv => csv_string(c.get(row), columns.len() == 1, out),
                },
            }
        }
        if format.encoding == FileFormat::JsonLines {
            out.push(b'}');
        }
        out.push(b'\n');
    }
}

fn float(v: f64, format: OutputFormat, out: &mut Vec<u8>) {
    if !v.is_finite() {
        // JSON has no NaN or infinity; CSV readers disagree on them: write null / empty.
        if format.encoding == FileFormat::JsonLines {
            out.extend_from_slice(b"null");
        }
        return;
    }
    match format.float_precision {
        Some(p) => {
            let _ = write!(out, "{v:.p$}");
        }
        None => out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes()),
    }
}

/// A CSV field, quoted when a reader would otherwise take it for something else: a field
/// with a delimiter, quote or line end; an empty field alone on its line (a blank line,
/// which readers skip); a leading U+FEFF (a byte order mark at the start of a file).
fn csv_string(s: &str, alone: bool, out: &mut Vec<u8>) {
    if s.contains([',', '"', '\n', '\r']) || (alone && s.is_empty()) || s.starts_with('\u{feff}') {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly as JSON requires.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::{DataType, Field, Schema, Value};

    fn batch() -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Str),
            Field::new("window_start", DataType::Int),
            Field::new("mean", DataType::Float),
        ]));
        let mut b = Batch::with_capacity(schema, 2);
        b.push_row(&[Value::Str("s0000".into()), Value::Int(0), Value::Float(50.1505)]);
        b.push_row(&[Value::Str("a,\"b\"".into()), Value::Int(-5), Value::Float(0.1)]);
        b
    }

    #[test]
    fn csv_with_precision_matches_the_workload_format() {
        let mut out = Vec::new();
        encode(&batch(), OutputFormat { encoding: FileFormat::Csv, float_precision: Some(3) }, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "s0000,0,50.151\n\"a,\"\"b\"\"\",-5,0.100\n");
    }

    #[test]
    fn json_lines_escape_strings_and_keep_exact_floats() {
        let mut out = Vec::new();
        encode(&batch(), OutputFormat { encoding: FileFormat::JsonLines, float_precision: None }, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"sensor\":\"s0000\",\"window_start\":0,\"mean\":50.1505}\n{\"sensor\":\"a,\\\"b\\\"\",\"window_start\":-5,\"mean\":0.1}\n"
        );
    }
}
