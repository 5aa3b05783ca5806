//! Records in batches: the data that flows between subtasks.
//!
//! A [`Batch`] is columnar: one typed [`Column`] per field of its [`Schema`], all of the same
//! length. Strings of a column share one buffer, so building or reading a batch allocates per
//! column, never per record. Columns are not nullable: a source that meets a record without a
//! declared field reports it as bad input instead of inventing a value.
//!
//! [`Value`] is the one-record, one-field view, for expressions, configuration and tests; the
//! hot paths read columns directly.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    /// `true` or `false`.
    Bool,
    /// A 64-bit signed integer (event times are integers of milliseconds).
    Int,
    /// A 64-bit float.
    Float,
    /// A UTF-8 string.
    Str,
}

impl DataType {
    /// The name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::Str => "string",
        }
    }

    /// The type named `name` in a configuration file.
    pub fn from_name(name: &str) -> Option<DataType> {
        match name {
            "bool" => Some(DataType::Bool),
            "int" => Some(DataType::Int),
            "float" => Some(DataType::Float),
            "string" => Some(DataType::Str),
            _ => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A named, typed field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its type.
    pub ty: DataType,
}

impl Field {
    /// A field.
    pub fn new(name: impl Into<String>, ty: DataType) -> Field {
        Field { name: name.into(), ty }
    }
}

/// The fields of a batch, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Schema {
    fields: Vec<Field>,
}

/// A shared schema.
pub type SchemaRef = Arc<Schema>;

impl Schema {
    /// A schema of these fields. Names must be distinct (the config layer reports duplicates).
    pub fn new(fields: Vec<Field>) -> Schema {
        debug_assert!(
            fields.iter().enumerate().all(|(i, f)| fields[..i].iter().all(|g| g.name != f.name)),
            "duplicate field names in {fields:?}"
        );
        Schema { fields }
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The position of the field `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The field `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// One field of one record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

impl Value {
    /// The value's type.
    pub fn data_type(&self) -> DataType {
        match self {
            Value::Bool(_) => DataType::Bool,
            Value::Int(_) => DataType::Int,
            Value::Float(_) => DataType::Float,
            Value::Str(_) => DataType::Str,
        }
    }
}

/// Strings of one column, in one buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct StrColumn {
    bytes: String,
    /// End offset in `bytes` of each string.
    ends: Vec<u32>,
}

impl StrColumn {
    /// An empty column with room for `records` strings of about `bytes_each` bytes.
    pub fn with_capacity(records: usize, bytes_each: usize) -> StrColumn {
        StrColumn { bytes: String::with_capacity(records * bytes_each), ends: Vec::with_capacity(records) }
    }

    /// Append a string.
    pub fn push(&mut self, s: &str) {
        self.bytes.push_str(s);
        self.ends.push(u32::try_from(self.bytes.len()).expect("a string column holds at most 4 GiB"));
    }

    /// Append a string written in place by `write` (no temporary `String`).
    pub fn push_with(&mut self, write: impl FnOnce(&mut String)) {
        write(&mut self.bytes);
        self.ends.push(u32::try_from(self.bytes.len()).expect("a string column holds at most 4 GiB"));
    }

    /// The `i`-th string.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The strings in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }
}

/// The values of one field across a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Column {
    /// Booleans.
    Bool(Vec<bool>),
    /// Integers.
    Int(Vec<i64>),
    /// Floats.
    Float(Vec<f64>),
    /// Strings.
    Str(StrColumn),
}

impl Column {
    /// An empty column of type `ty` with room for `records` values.
    pub fn with_capacity(ty: DataType, records: usize) -> Column {
        match ty {
            DataType::Bool => Column::Bool(Vec::with_capacity(records)),
            DataType::Int => Column::Int(Vec::with_capacity(records)),
            DataType::Float => Column::Float(Vec::with_capacity(records)),
            DataType::Str => Column::Str(StrColumn::with_capacity(records, 8)),
        }
    }

    /// The column's type.
    pub fn data_type(&self) -> DataType {
        match self {
            Column::Bool(_) => DataType::Bool,
            Column::Int(_) => DataType::Int,
            Column::Float(_) => DataType::Float,
            Column::Str(_) => DataType::Str,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Column::Bool(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Str(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th value.
    pub fn value(&self, i: usize) -> Value {
        match self {
            Column::Bool(v) => Value::Bool(v[i]),
            Column::Int(v) => Value::Int(v[i]),
            Column::Float(v) => Value::Float(v[i]),
            Column::Str(v) => Value::Str(v.get(i).to_owned()),
        }
    }

    /// Keep the first `len` values (a record that failed half-way is taken back).
    pub fn truncate(&mut self, len: usize) {
        match self {
            Column::Bool(v) => v.truncate(len),
            Column::Int(v) => v.truncate(len),
            Column::Float(v) => v.truncate(len),
            Column::Str(v) => {
                v.ends.truncate(len);
                let end = v.ends.last().map_or(0, |&e| e as usize);
                v.bytes.truncate(end);
            }
        }
    }

    /// Append `value`, which must have the column's type.
    pub fn push(&mut self, value: &Value) {
        match (self, value) {
            (Column::Bool(c), Value::Bool(v)) => c.push(*v),
            (Column::Int(c), Value::Int(v)) => c.push(*v),
            (Column::Float(c), Value::Float(v)) => c.push(*v),
            (Column::Str(c), Value::Str(v)) => c.push(v),
            (c, v) => panic!("pushing a {} value into a {} column", v.data_type(), c.data_type()),
        }
    }

    /// Append the `i`-th value of `other`, which must have the same type.
    pub fn push_from(&mut self, other: &Column, i: usize) {
        match (self, other) {
            (Column::Bool(c), Column::Bool(o)) => c.push(o[i]),
            (Column::Int(c), Column::Int(o)) => c.push(o[i]),
            (Column::Float(c), Column::Float(o)) => c.push(o[i]),
            (Column::Str(c), Column::Str(o)) => c.push(o.get(i)),
            (c, o) => panic!("copying a {} value into a {} column", o.data_type(), c.data_type()),
        }
    }
}

/// The channel of `channels` a key goes to (the hash partition of a keyed edge, and the
/// generator's split into subtasks, which must agree): a fixed hash, the same in every run
/// and on every machine.
pub fn key_channel(key: &[u8], channels: usize) -> usize {
    // FNV-1a: stable across runs and versions, unlike std's randomly seeded hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % channels as u64) as usize
}

/// Records of one schema, column by column; or, with no records, an event-time floor (a
/// source's idle tick: event time has reached at least this, though nothing arrived).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    schema: SchemaRef,
    columns: Vec<Column>,
    len: usize,
    floor: Option<i64>,
}

impl Batch {
    /// Bytes its columns hold (for memory budgets).
    pub fn bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Bool(v) => v.len(),
                Column::Int(v) => 8 * v.len(),
                Column::Float(v) => 8 * v.len(),
                Column::Str(s) => s.bytes.len() + 4 * s.ends.len(),
            })
            .sum()
    }

    /// A batch from columns that match `schema` in number, type and length.
    pub fn new(schema: SchemaRef, columns: Vec<Column>) -> Batch {
        assert_eq!(schema.len(), columns.len(), "one column per field");
        let len = columns.first().map_or(0, Column::len);
        for (field, column) in schema.fields().iter().zip(&columns) {
            assert_eq!(field.ty, column.data_type(), "column type of field {}", field.name);
            assert_eq!(column.len(), len, "column length of field {}", field.name);
        }
        Batch { schema, columns, len, floor: None }
    }

    /// An empty batch of `schema` with room for `records` records.
    pub fn with_capacity(schema: SchemaRef, records: usize) -> Batch {
        let columns = schema.fields().iter().map(|f| Column::with_capacity(f.ty, records)).collect();
        Batch { schema, columns, len: 0, floor: None }
    }

    /// No records, only the news that event time has reached `floor` on this stream (a
    /// source's idle tick): a window may close what ends before it.
    pub fn floor_only(schema: SchemaRef, floor: i64) -> Batch {
        Batch { floor: Some(floor), ..Batch::with_capacity(schema, 0) }
    }

    /// The event-time floor of a [`Batch::floor_only`] batch.
    pub fn event_time_floor(&self) -> Option<i64> {
        self.floor
    }

    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The columns, in schema order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The column of field `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.schema.index_of(name).map(|i| &self.columns[i])
    }

    /// Append one record given as values in schema order.
    pub fn push_row(&mut self, row: &[Value]) {
        assert_eq!(row.len(), self.columns.len(), "one value per field");
        for (column, value) in self.columns.iter_mut().zip(row) {
            column.push(value);
        }
        self.len += 1;
    }

    /// Append the `i`-th record of `other`, which must have the same schema.
    pub fn push_from(&mut self, other: &Batch, i: usize) {
        debug_assert_eq!(self.schema, other.schema);
        for (column, source) in self.columns.iter_mut().zip(&other.columns) {
            column.push_from(source, i);
        }
        self.len += 1;
    }

    /// Mutable columns for a builder that appends to every column, then calls
    /// [`Batch::set_len`].
    pub fn columns_mut(&mut self) -> &mut [Column] {
        &mut self.columns
    }

    /// Declare the length after appending through [`Batch::columns_mut`].
    pub fn set_len(&mut self, len: usize) {
        debug_assert!(self.columns.iter().all(|c| c.len() == len), "columns of unequal length");
        self.len = len;
    }

    /// The `i`-th record as values.
    pub fn row(&self, i: usize) -> Vec<Value> {
        self.columns.iter().map(|c| c.value(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Str),
            Field::new("ts", DataType::Int),
            Field::new("value", DataType::Float),
        ]))
    }

    #[test]
    fn rows_round_trip_through_columns() {
        let mut b = Batch::with_capacity(schema(), 2);
        b.push_row(&[Value::Str("s0001".into()), Value::Int(5), Value::Float(1.5)]);
        b.push_row(&[Value::Str("".into()), Value::Int(-1), Value::Float(0.0)]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.row(1), vec![Value::Str("".into()), Value::Int(-1), Value::Float(0.0)]);
        let Some(Column::Str(s)) = b.column("sensor") else { panic!() };
        assert_eq!(s.iter().collect::<Vec<_>>(), vec!["s0001", ""]);
        let mut c = Batch::with_capacity(schema(), 1);
        c.push_from(&b, 0);
        assert_eq!(c.row(0), b.row(0));
    }

    #[test]
    #[should_panic(expected = "column type of field ts")]
    fn mismatched_column_type_is_a_bug() {
        Batch::new(
            schema(),
            vec![Column::Str(StrColumn::default()), Column::Float(vec![]), Column::Float(vec![])],
        );
    }
}
