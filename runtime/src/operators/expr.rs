//! The expression language of `filter` and `map`: typed expressions over the fields of one
//! record, compiled once against a schema and evaluated a whole batch at a time.
//!
//! ```text
//! literals     42   -7   1.5   1e3   "text"   true   false
//! fields       value   sensor          (a field of the record, by name)
//! arithmetic   a + b   a - b   a * b   a / b   a % b   -a
//! comparison   a == b   a != b   a < b   a <= b   a > b   a >= b
//! logic        a && b   a || b   !a
//! grouping     ( ... )
//! ```
//!
//! Types: arithmetic takes ints and floats; int with int stays int (`/` truncates, `%` has
//! the sign of the left side, overflow wraps), a float on either side gives a float.
//! Comparisons take numbers with numbers, strings with strings (byte order), and bools with
//! bools for `==`/`!=`. `&&`, `||` and `!` take bools. Every type error is reported by
//! [`Expr::compile`], before any data flows. At run time only integer `/` and `%` by zero
//! fail; `&&` and `||` short-circuit per record, so `n != 0 && total / n > 2` never divides
//! by zero.
//!
//! Parsing is evalexpr's ([`evalexpr::build_operator_tree`]); this module walks its tree into
//! its own typed form and evaluates that column-wise, with no per-record allocation or
//! lookup. evalexpr's own per-record evaluation needs a context filled per record: measured
//! once (release build, 2-core edge host, `value > 50.0 && sensor != "s0001"` over the
//! sensor-window schema) at about 1.5 million records/s, against about 75 million records/s
//! here (see the ignored test `evalexpr_per_record_compared`).
//!
//! Inherited from evalexpr's tokenizer: `//` and `/* */` start comments; a field whose name
//! reads as a literal (`true`, `nan`, `inf`, `12`) cannot be referenced; an integer literal
//! beyond the range of i64 reads as a float.

use std::borrow::Cow;
use std::cmp::Ordering;

use evalexpr::{DefaultNumericTypes, Node as Ast, Operator as AstOp, Value as AstValue};

use crate::batch::{Batch, Column, DataType, Schema, StrColumn};

/// An expression that could not be compiled, or not evaluated on some record.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct ExprError {
    /// What went wrong, naming the thing (short, lowercase).
    pub message: String,
}

impl ExprError {
    fn new(message: impl Into<String>) -> ExprError {
        ExprError { message: message.into() }
    }
}

/// A compiled, type-checked expression.
#[derive(Debug, Clone)]
pub struct Expr {
    source: String,
    root: Node,
    ty: DataType,
}

/// The typed form. Operands of `Arith` and `Cmp` have one type (ints are converted to
/// floats by `ToFloat` where the other side is a float).
#[derive(Debug, Clone)]
enum Node {
    Field(usize),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Box<str>),
    ToFloat(Box<Node>),
    Neg(Num, Box<Node>),
    Not(Box<Node>),
    Arith(ArithOp, Num, Box<Node>, Box<Node>),
    Cmp(CmpOp, DataType, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn test(self, ordering: Option<Ordering>) -> bool {
        use Ordering::*;
        match (self, ordering) {
            (CmpOp::Eq, Some(Equal)) => true,
            (CmpOp::Ne, o) => o != Some(Equal),
            (CmpOp::Lt, Some(Less)) => true,
            (CmpOp::Le, Some(Less | Equal)) => true,
            (CmpOp::Gt, Some(Greater)) => true,
            (CmpOp::Ge, Some(Greater | Equal)) => true,
            _ => false,
        }
    }
}

impl Expr {
    /// Parse `source` and type-check it against `schema`. Field references are resolved to
    /// positions in `schema`; evaluation reads columns in that order.
    pub fn compile(source: &str, schema: &Schema) -> Result<Expr, ExprError> {
        let ast = evalexpr::build_operator_tree::<DefaultNumericTypes>(source).map_err(|e| {
            let reason = e.to_string();
            let reason = reason.trim_end_matches('.');
            ExprError::new(format!("cannot parse {source:?}: {}", lowercase_first(reason)))
        })?;
        let (root, ty) = compile(&ast, schema)?;
        Ok(Expr { source: source.to_owned(), root, ty })
    }

    /// The type of the expression's value.
    pub fn data_type(&self) -> DataType {
        self.ty
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate over every record of `batch`, whose schema must be the one compiled against.
    pub fn eval(&self, batch: &Batch) -> Result<Column, ExprError> {
        let columns: Vec<&Column> = batch.columns().iter().collect();
        self.eval_columns(&columns, batch.len())
    }

    /// Evaluate over `len` records given as columns in the order of the compiled schema.
    pub fn eval_columns(&self, columns: &[&Column], len: usize) -> Result<Column, ExprError> {
        Ok(self.eval_values(columns, len)?.into_column(len))
    }

    /// Evaluate a bool expression over `len` records, as a selection.
    pub(crate) fn eval_selection<'a>(
        &'a self,
        columns: &[&'a Column],
        len: usize,
    ) -> Result<Selection<'a>, ExprError> {
        match self.eval_values(columns, len)? {
            Values::Bool(Vector::Const(true)) => Ok(Selection::All),
            Values::Bool(Vector::Const(false)) => Ok(Selection::None),
            Values::Bool(Vector::Slice(mask)) => Ok(Selection::Mask(Cow::Borrowed(mask))),
            Values::Bool(Vector::Owned(mask)) => Ok(Selection::Mask(Cow::Owned(mask))),
            _ => panic!("selection from a {} expression {:?}", self.ty, self.source),
        }
    }

    fn eval_values<'a>(&'a self, columns: &[&'a Column], len: usize) -> Result<Values<'a>, ExprError> {
        let eval = Eval { source: &self.source, columns, len };
        eval.node(&self.root, None)
    }
}

/// The records a bool expression selects.
#[derive(Debug, PartialEq)]
pub(crate) enum Selection<'a> {
    /// Every record.
    All,
    /// No record.
    None,
    /// The records whose entry is true.
    Mask(Cow<'a, [bool]>),
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn symbol(op: &AstOp) -> &'static str {
    match op {
        AstOp::Add => "+",
        AstOp::Sub => "-",
        AstOp::Neg => "-",
        AstOp::Mul => "*",
        AstOp::Div => "/",
        AstOp::Mod => "%",
        AstOp::Exp => "^",
        AstOp::Eq => "==",
        AstOp::Neq => "!=",
        AstOp::Gt => ">",
        AstOp::Lt => "<",
        AstOp::Geq => ">=",
        AstOp::Leq => "<=",
        AstOp::And => "&&",
        AstOp::Or => "||",
        AstOp::Not => "!",
        AstOp::Assign => "=",
        AstOp::AddAssign => "+=",
        AstOp::SubAssign => "-=",
        AstOp::MulAssign => "*=",
        AstOp::DivAssign => "/=",
        AstOp::ModAssign => "%=",
        AstOp::ExpAssign => "^=",
        AstOp::AndAssign => "&&=",
        AstOp::OrAssign => "||=",
        AstOp::Tuple => ",",
        AstOp::Chain => ";",
        AstOp::RootNode
        | AstOp::Const { .. }
        | AstOp::VariableIdentifierWrite { .. }
        | AstOp::VariableIdentifierRead { .. }
        | AstOp::FunctionIdentifier { .. } => "?",
    }
}

/// The message for a field name that is not in `schema`.
pub(crate) fn unknown_field(name: &str, schema: &Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name.as_str()).collect();
    format!("unknown field {name:?} (fields: {})", names.join(", "))
}

fn compile(ast: &Ast, schema: &Schema) -> Result<(Node, DataType), ExprError> {
    let op = ast.operator();
    let children = ast.children();
    let arity = |n: usize| {
        if children.len() == n {
            Ok(())
        } else {
            Err(ExprError::new(format!("{:?} is missing an operand", symbol(op))))
        }
    };
    match op {
        AstOp::RootNode => match children {
            [] => Err(ExprError::new("empty expression")),
            [child] => compile(child, schema),
            _ => panic!("evalexpr gave a root node {} children", children.len()),
        },
        AstOp::Const { value } => match value {
            AstValue::Int(i) => Ok((Node::Int(*i), DataType::Int)),
            AstValue::Float(f) => Ok((Node::Float(*f), DataType::Float)),
            AstValue::Boolean(b) => Ok((Node::Bool(*b), DataType::Bool)),
            AstValue::String(s) => Ok((Node::Str(s.as_str().into()), DataType::Str)),
            AstValue::Tuple(_) | AstValue::Empty => Err(ExprError::new("unsupported literal")),
        },
        AstOp::VariableIdentifierRead { identifier } => match schema.index_of(identifier) {
            Some(i) => Ok((Node::Field(i), schema.fields()[i].ty)),
            None => Err(ExprError::new(unknown_field(identifier, schema))),
        },
        AstOp::FunctionIdentifier { identifier } => {
            Err(ExprError::new(format!("unknown function {identifier:?} (expressions have no functions)")))
        }
        AstOp::Add | AstOp::Sub | AstOp::Mul | AstOp::Div | AstOp::Mod => {
            arity(2)?;
            compile_arith(op, children, schema)
        }
        AstOp::Neg => {
            arity(1)?;
            let (e, t) = compile(&children[0], schema)?;
            match t {
                DataType::Int => Ok((Node::Neg(Num::Int, e.into()), t)),
                DataType::Float => Ok((Node::Neg(Num::Float, e.into()), t)),
                _ => Err(ExprError::new(format!("\"-\" needs a number, found {t}"))),
            }
        }
        AstOp::Eq | AstOp::Neq | AstOp::Gt | AstOp::Lt | AstOp::Geq | AstOp::Leq => {
            arity(2)?;
            compile_cmp(op, children, schema)
        }
        AstOp::And | AstOp::Or => {
            arity(2)?;
            let (l, lt) = compile(&children[0], schema)?;
            let (r, rt) = compile(&children[1], schema)?;
            if (lt, rt) != (DataType::Bool, DataType::Bool) {
                return Err(ExprError::new(format!("{:?} needs bools, found {lt} and {rt}", symbol(op))));
            }
            let node =
                if *op == AstOp::And { Node::And(l.into(), r.into()) } else { Node::Or(l.into(), r.into()) };
            Ok((node, DataType::Bool))
        }
        AstOp::Not => {
            arity(1)?;
            let (e, t) = compile(&children[0], schema)?;
            if t != DataType::Bool {
                return Err(ExprError::new(format!("\"!\" needs a bool, found {t}")));
            }
            Ok((Node::Not(e.into()), DataType::Bool))
        }
        AstOp::Exp => Err(ExprError::new("unsupported operator \"^\"")),
        AstOp::Assign
        | AstOp::AddAssign
        | AstOp::SubAssign
        | AstOp::MulAssign
        | AstOp::DivAssign
        | AstOp::ModAssign
        | AstOp::ExpAssign
        | AstOp::AndAssign
        | AstOp::OrAssign
        | AstOp::VariableIdentifierWrite { .. } => {
            Err(ExprError::new(format!("assignment {:?} is not supported (compare with \"==\")", symbol(op))))
        }
        AstOp::Tuple | AstOp::Chain => Err(ExprError::new(format!("unexpected {:?}", symbol(op)))),
    }
}

/// An arithmetic operator over two operands: ints stay ints, a float makes both floats.
fn compile_arith(op: &AstOp, children: &[Ast], schema: &Schema) -> Result<(Node, DataType), ExprError> {
    let arith = match op {
        AstOp::Add => ArithOp::Add,
        AstOp::Sub => ArithOp::Sub,
        AstOp::Mul => ArithOp::Mul,
        AstOp::Div => ArithOp::Div,
        _ => ArithOp::Rem,
    };
    let (l, lt) = compile(&children[0], schema)?;
    let (r, rt) = compile(&children[1], schema)?;
    match (lt, rt) {
        (DataType::Int, DataType::Int) => {
            Ok((Node::Arith(arith, Num::Int, l.into(), r.into()), DataType::Int))
        }
        (DataType::Int | DataType::Float, DataType::Int | DataType::Float) => {
            let (l, r) = (to_float(l, lt), to_float(r, rt));
            Ok((Node::Arith(arith, Num::Float, l.into(), r.into()), DataType::Float))
        }
        _ => Err(ExprError::new(format!("{:?} needs numbers, found {lt} and {rt}", symbol(op)))),
    }
}

/// A comparison of two operands of comparable types.
fn compile_cmp(op: &AstOp, children: &[Ast], schema: &Schema) -> Result<(Node, DataType), ExprError> {
    let cmp = match op {
        AstOp::Eq => CmpOp::Eq,
        AstOp::Neq => CmpOp::Ne,
        AstOp::Gt => CmpOp::Gt,
        AstOp::Lt => CmpOp::Lt,
        AstOp::Geq => CmpOp::Ge,
        _ => CmpOp::Le,
    };
    let (l, lt) = compile(&children[0], schema)?;
    let (r, rt) = compile(&children[1], schema)?;
    let operands = match (lt, rt) {
        (DataType::Int, DataType::Int) => DataType::Int,
        (DataType::Int | DataType::Float, DataType::Int | DataType::Float) => DataType::Float,
        (DataType::Str, DataType::Str) => DataType::Str,
        (DataType::Bool, DataType::Bool) if matches!(cmp, CmpOp::Eq | CmpOp::Ne) => DataType::Bool,
        (DataType::Bool, DataType::Bool) => {
            return Err(ExprError::new(format!("{:?} cannot order bools", symbol(op))));
        }
        _ => return Err(ExprError::new(format!("cannot compare {lt} with {rt}"))),
    };
    let (l, r) = if operands == DataType::Float { (to_float(l, lt), to_float(r, rt)) } else { (l, r) };
    Ok((Node::Cmp(cmp, operands, l.into(), r.into()), DataType::Bool))
}

fn to_float(node: Node, ty: DataType) -> Node {
    match (node, ty) {
        (Node::Int(i), _) => Node::Float(i as f64),
        (node, DataType::Int) => Node::ToFloat(node.into()),
        (node, _) => node,
    }
}

/// The values of one subexpression across a batch: a constant, a borrowed column or a
/// computed one.
#[derive(Debug)]
enum Vector<'a, T> {
    Const(T),
    Slice(&'a [T]),
    Owned(Vec<T>),
}

/// A borrowed view of a [`Vector`].
#[derive(Clone, Copy)]
enum View<'v, T> {
    Const(T),
    Slice(&'v [T]),
}

impl<T: Copy> Vector<'_, T> {
    fn view(&self) -> View<'_, T> {
        match self {
            Vector::Const(c) => View::Const(*c),
            Vector::Slice(s) => View::Slice(s),
            Vector::Owned(v) => View::Slice(v),
        }
    }

    fn into_vec(self, len: usize) -> Vec<T> {
        match self {
            Vector::Const(c) => vec![c; len],
            Vector::Slice(s) => s.to_vec(),
            Vector::Owned(v) => v,
        }
    }
}

fn map1<T: Copy, R>(a: &Vector<'_, T>, f: impl Fn(T) -> R) -> Vector<'static, R> {
    match a.view() {
        View::Const(x) => Vector::Const(f(x)),
        View::Slice(xs) => Vector::Owned(xs.iter().map(|&x| f(x)).collect()),
    }
}

fn map2<A: Copy, B: Copy, R>(
    a: &Vector<'_, A>,
    b: &Vector<'_, B>,
    f: impl Fn(A, B) -> R,
) -> Vector<'static, R> {
    match (a.view(), b.view()) {
        (View::Const(x), View::Const(y)) => Vector::Const(f(x, y)),
        (View::Slice(xs), View::Const(y)) => Vector::Owned(xs.iter().map(|&x| f(x, y)).collect()),
        (View::Const(x), View::Slice(ys)) => Vector::Owned(ys.iter().map(|&y| f(x, y)).collect()),
        (View::Slice(xs), View::Slice(ys)) => {
            debug_assert_eq!(xs.len(), ys.len());
            Vector::Owned(xs.iter().zip(ys).map(|(&x, &y)| f(x, y)).collect())
        }
    }
}

fn compare<T: Copy + PartialOrd>(op: CmpOp, a: &Vector<'_, T>, b: &Vector<'_, T>) -> Vector<'static, bool> {
    match op {
        CmpOp::Eq => map2(a, b, |x, y| x == y),
        CmpOp::Ne => map2(a, b, |x, y| x != y),
        CmpOp::Lt => map2(a, b, |x, y| x < y),
        CmpOp::Le => map2(a, b, |x, y| x <= y),
        CmpOp::Gt => map2(a, b, |x, y| x > y),
        CmpOp::Ge => map2(a, b, |x, y| x >= y),
    }
}

/// Strings across a batch: a literal or a column.
#[derive(Debug, Clone, Copy)]
enum Strs<'a> {
    Const(&'a str),
    Column(&'a StrColumn),
}

impl<'a> Strs<'a> {
    fn get(self, i: usize) -> &'a str {
        match self {
            Strs::Const(s) => s,
            Strs::Column(c) => c.get(i),
        }
    }
}

#[derive(Debug)]
enum Values<'a> {
    Int(Vector<'a, i64>),
    Float(Vector<'a, f64>),
    Bool(Vector<'a, bool>),
    Str(Strs<'a>),
}

impl<'a> Values<'a> {
    fn int(self) -> Vector<'a, i64> {
        match self {
            Values::Int(v) => v,
            other => panic!("type checker let a non-int through: {other:?}"),
        }
    }

    fn float(self) -> Vector<'a, f64> {
        match self {
            Values::Float(v) => v,
            other => panic!("type checker let a non-float through: {other:?}"),
        }
    }

    fn bool(self) -> Vector<'a, bool> {
        match self {
            Values::Bool(v) => v,
            other => panic!("type checker let a non-bool through: {other:?}"),
        }
    }

    fn str(self) -> Strs<'a> {
        match self {
            Values::Str(v) => v,
            other => panic!("type checker let a non-string through: {other:?}"),
        }
    }

    fn into_column(self, len: usize) -> Column {
        match self {
            Values::Int(v) => Column::Int(v.into_vec(len)),
            Values::Float(v) => Column::Float(v.into_vec(len)),
            Values::Bool(v) => Column::Bool(v.into_vec(len)),
            Values::Str(Strs::Column(c)) => Column::Str(c.clone()),
            Values::Str(Strs::Const(s)) => {
                let mut c = StrColumn::with_capacity(len, s.len());
                for _ in 0..len {
                    c.push(s);
                }
                Column::Str(c)
            }
        }
    }
}

/// One evaluation over one batch.
struct Eval<'e, 'a> {
    source: &'e str,
    columns: &'e [&'a Column],
    len: usize,
}

impl<'a> Eval<'_, 'a> {
    /// Evaluate `node`. `active` marks the records whose value is used (the others are
    /// behind a short-circuiting `&&`/`||`); only active records can fail.
    fn node(&self, node: &'a Node, active: Option<&[bool]>) -> Result<Values<'a>, ExprError> {
        Ok(match node {
            Node::Field(i) => match self.columns[*i] {
                Column::Int(v) => Values::Int(Vector::Slice(v)),
                Column::Float(v) => Values::Float(Vector::Slice(v)),
                Column::Bool(v) => Values::Bool(Vector::Slice(v)),
                Column::Str(v) => Values::Str(Strs::Column(v)),
            },
            Node::Int(i) => Values::Int(Vector::Const(*i)),
            Node::Float(f) => Values::Float(Vector::Const(*f)),
            Node::Bool(b) => Values::Bool(Vector::Const(*b)),
            Node::Str(s) => Values::Str(Strs::Const(s)),
            Node::ToFloat(e) => Values::Float(map1(&self.node(e, active)?.int(), |x| x as f64)),
            Node::Neg(Num::Int, e) => Values::Int(map1(&self.node(e, active)?.int(), i64::wrapping_neg)),
            Node::Neg(Num::Float, e) => Values::Float(map1(&self.node(e, active)?.float(), |x| -x)),
            Node::Not(e) => Values::Bool(map1(&self.node(e, active)?.bool(), |x| !x)),
            Node::Arith(op, Num::Int, l, r) => {
                let l = self.node(l, active)?.int();
                let r = self.node(r, active)?.int();
                Values::Int(match op {
                    ArithOp::Add => map2(&l, &r, i64::wrapping_add),
                    ArithOp::Sub => map2(&l, &r, i64::wrapping_sub),
                    ArithOp::Mul => map2(&l, &r, i64::wrapping_mul),
                    ArithOp::Div => {
                        self.check_divisor(&r, active, "division")?;
                        map2(&l, &r, |x, y| if y == 0 { 0 } else { x.wrapping_div(y) })
                    }
                    ArithOp::Rem => {
                        self.check_divisor(&r, active, "modulo")?;
                        map2(&l, &r, |x, y| if y == 0 { 0 } else { x.wrapping_rem(y) })
                    }
                })
            }
            Node::Arith(op, Num::Float, l, r) => {
                let l = self.node(l, active)?.float();
                let r = self.node(r, active)?.float();
                Values::Float(match op {
                    ArithOp::Add => map2(&l, &r, |x, y| x + y),
                    ArithOp::Sub => map2(&l, &r, |x, y| x - y),
                    ArithOp::Mul => map2(&l, &r, |x, y| x * y),
                    ArithOp::Div => map2(&l, &r, |x, y| x / y),
                    ArithOp::Rem => map2(&l, &r, |x, y| x % y),
                })
            }
            Node::Cmp(op, ty, l, r) => {
                let l = self.node(l, active)?;
                let r = self.node(r, active)?;
                Values::Bool(match ty {
                    DataType::Int => compare(*op, &l.int(), &r.int()),
                    DataType::Float => compare(*op, &l.float(), &r.float()),
                    DataType::Bool => compare(*op, &l.bool(), &r.bool()),
                    DataType::Str => match (l.str(), r.str()) {
                        (Strs::Const(a), Strs::Const(b)) => Vector::Const(op.test(a.partial_cmp(b))),
                        (a, b) => Vector::Owned(
                            (0..self.len).map(|i| op.test(a.get(i).partial_cmp(b.get(i)))).collect(),
                        ),
                    },
                })
            }
            Node::And(l, r) => Values::Bool(self.short_circuit(l, r, active, true)?),
            Node::Or(l, r) => Values::Bool(self.short_circuit(l, r, active, false)?),
        })
    }

    /// `l && r` (`and`) or `l || r`: `r` is evaluated only where `l` does not decide.
    fn short_circuit(
        &self,
        l: &'a Node,
        r: &'a Node,
        active: Option<&[bool]>,
        and: bool,
    ) -> Result<Vector<'a, bool>, ExprError> {
        let l = self.node(l, active)?.bool();
        let undecided: Vec<bool> = match l.view() {
            View::Const(x) if x == and => return Ok(self.node(r, active)?.bool()),
            View::Const(_) => return Ok(l),
            View::Slice(xs) => match active {
                None => xs.iter().map(|&x| x == and).collect(),
                Some(m) => xs.iter().zip(m).map(|(&x, &m)| m && x == and).collect(),
            },
        };
        if !undecided.contains(&true) {
            // `l` decides every record that matters.
            return Ok(l);
        }
        let r = self.node(r, Some(&undecided))?.bool();
        Ok(if and { map2(&l, &r, |x, y| x && y) } else { map2(&l, &r, |x, y| x || y) })
    }

    fn check_divisor(
        &self,
        d: &Vector<'_, i64>,
        active: Option<&[bool]>,
        what: &str,
    ) -> Result<(), ExprError> {
        let zero = match (d.view(), active) {
            (View::Const(0), None) => self.len > 0,
            (View::Const(0), Some(m)) => m.contains(&true),
            (View::Const(_), _) => false,
            (View::Slice(ds), None) => ds.contains(&0),
            (View::Slice(ds), Some(m)) => ds.iter().zip(m).any(|(&d, &m)| m && d == 0),
        };
        if zero { Err(ExprError::new(format!("{what} by zero in {:?}", self.source))) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::{Field, Value};

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Str),
            Field::new("ts", DataType::Int),
            Field::new("value", DataType::Float),
            Field::new("ok", DataType::Bool),
            Field::new("n", DataType::Int),
        ]))
    }

    fn batch() -> Batch {
        let mut b = Batch::with_capacity(schema(), 4);
        for (s, ts, v, ok, n) in
            [("s0001", 10, 1.5, true, 2), ("s0002", -7, -0.25, false, 0), ("s0001", 0, 100.0, true, -3)]
        {
            b.push_row(&[
                Value::Str(s.into()),
                Value::Int(ts),
                Value::Float(v),
                Value::Bool(ok),
                Value::Int(n),
            ]);
        }
        b
    }

    fn eval(source: &str) -> Result<Column, ExprError> {
        let b = batch();
        Expr::compile(source, b.schema())?.eval(&b)
    }

    fn compile_error(source: &str) -> String {
        Expr::compile(source, &schema()).expect_err(source).message
    }

    #[test]
    fn integer_arithmetic_stays_integer() {
        assert_eq!(eval("ts * 2 + 1").unwrap(), Column::Int(vec![21, -13, 1]));
        assert_eq!(eval("ts / 3").unwrap(), Column::Int(vec![3, -2, 0]));
        assert_eq!(eval("ts % 3").unwrap(), Column::Int(vec![1, -1, 0]));
        assert_eq!(eval("-ts - -1").unwrap(), Column::Int(vec![-9, 8, 1]));
        assert_eq!(eval("2 - 3 - 4").unwrap(), Column::Int(vec![-5, -5, -5]));
        assert_eq!(eval("(1 + 2) * 3").unwrap(), Column::Int(vec![9, 9, 9]));
    }

    #[test]
    fn mixing_int_and_float_gives_float() {
        assert_eq!(eval("value * 2").unwrap(), Column::Float(vec![3.0, -0.5, 200.0]));
        assert_eq!(eval("ts + value").unwrap(), Column::Float(vec![11.5, -7.25, 100.0]));
        assert_eq!(eval("ts / 4.0").unwrap(), Column::Float(vec![2.5, -1.75, 0.0]));
        assert_eq!(Expr::compile("ts + 1e3", &schema()).unwrap().data_type(), DataType::Float);
    }

    #[test]
    fn comparisons_and_logic() {
        assert_eq!(eval("value > 1").unwrap(), Column::Bool(vec![true, false, true]));
        assert_eq!(eval("ts >= 0 && ok").unwrap(), Column::Bool(vec![true, false, true]));
        assert_eq!(eval("sensor == \"s0001\"").unwrap(), Column::Bool(vec![true, false, true]));
        assert_eq!(eval("\"s0002\" <= sensor").unwrap(), Column::Bool(vec![false, true, false]));
        assert_eq!(eval("!ok || value < 0").unwrap(), Column::Bool(vec![false, true, false]));
        assert_eq!(eval("ok != false").unwrap(), Column::Bool(vec![true, false, true]));
        assert_eq!(eval("ts == 10.0").unwrap(), Column::Bool(vec![true, false, false]));
        assert_eq!(eval("true").unwrap(), Column::Bool(vec![true, true, true]));
    }

    #[test]
    fn strings_and_literals_fill_columns() {
        assert_eq!(eval("sensor").unwrap(), batch().columns()[0].clone());
        let Column::Str(c) = eval("\"x\"").unwrap() else { panic!() };
        assert_eq!(c.iter().collect::<Vec<_>>(), vec!["x", "x", "x"]);
    }

    #[test]
    fn integer_division_by_zero_is_an_error_not_a_panic() {
        assert_eq!(eval("ts / n").unwrap_err().message, "division by zero in \"ts / n\"");
        assert_eq!(eval("ts % 0").unwrap_err().message, "modulo by zero in \"ts % 0\"");
        // Floats follow IEEE 754.
        assert_eq!(
            eval("value / 0.0").unwrap(),
            Column::Float(vec![f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY])
        );
    }

    #[test]
    fn logic_short_circuits_per_record() {
        assert_eq!(eval("n != 0 && ts / n > 0").unwrap(), Column::Bool(vec![true, false, false]));
        assert_eq!(eval("n == 0 || ts % n == 0").unwrap(), Column::Bool(vec![true, true, true]));
        assert_eq!(eval("false && 1 / 0 == 0").unwrap(), Column::Bool(vec![false, false, false]));
        // Nested: the inner guard only sees records the outer one let through.
        assert_eq!(eval("ok && (n == 0 || ts / n <= 0)").unwrap(), Column::Bool(vec![false, false, true]));
        assert!(eval("ok || ts / n > 0").is_err());
    }

    #[test]
    fn overflow_wraps() {
        let b = batch();
        let e = Expr::compile("9223372036854775807 + n", b.schema()).unwrap();
        assert_eq!(e.eval(&b).unwrap(), Column::Int(vec![i64::MIN + 1, i64::MAX, i64::MAX - 3]));
        let e = Expr::compile("(0 - 9223372036854775807 - 1) / (n - 1)", b.schema()).unwrap();
        assert_eq!(e.eval(&b).unwrap(), Column::Int(vec![i64::MIN, i64::MIN, i64::MIN / -4]));
    }

    #[test]
    fn type_errors_are_found_at_compile_time() {
        assert_eq!(compile_error("valu > 1"), "unknown field \"valu\" (fields: sensor, ts, value, ok, n)");
        assert_eq!(compile_error("sensor + 1"), "\"+\" needs numbers, found string and int");
        assert_eq!(compile_error("sensor > 1"), "cannot compare string with int");
        assert_eq!(compile_error("ok < true"), "\"<\" cannot order bools");
        assert_eq!(compile_error("ts && ok"), "\"&&\" needs bools, found int and bool");
        assert_eq!(compile_error("!value"), "\"!\" needs a bool, found float");
        assert_eq!(compile_error("-sensor"), "\"-\" needs a number, found string");
        assert_eq!(compile_error("sqrt(value)"), "unknown function \"sqrt\" (expressions have no functions)");
        assert_eq!(compile_error("value ^ 2"), "unsupported operator \"^\"");
        assert_eq!(compile_error("ts = 1"), "assignment \"=\" is not supported (compare with \"==\")");
        assert_eq!(compile_error("ts, value"), "unexpected \",\"");
        assert_eq!(compile_error("ts +"), "\"+\" is missing an operand");
        assert_eq!(compile_error(""), "empty expression");
        assert_eq!(compile_error("()"), "empty expression");
        assert!(compile_error("sensor == \"open").starts_with("cannot parse \"sensor == \\\"open\": "));
    }

    #[test]
    fn selection_borrows_a_bool_column() {
        let b = batch();
        let columns: Vec<&Column> = b.columns().iter().collect();
        let e = Expr::compile("ok", b.schema()).unwrap();
        assert_eq!(
            e.eval_selection(&columns, 3).unwrap(),
            Selection::Mask(Cow::Borrowed(&[true, false, true][..]))
        );
        let e = Expr::compile("1 < 2", b.schema()).unwrap();
        assert_eq!(e.eval_selection(&columns, 3).unwrap(), Selection::All);
    }

    /// The figure in the module documentation. Run with
    /// `cargo test --release -p weir-runtime --lib evalexpr_per_record -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check"]
    fn evalexpr_per_record_compared() {
        use evalexpr::{ContextWithMutableVariables, HashMapContext};
        use std::time::Instant;

        let batch = crate::operators::testutil::sensor_batch(0..1_000_000);
        let source = "value > 50.0 && sensor != \"s0001\"";
        let Column::Str(sensors) = &batch.columns()[0] else { panic!() };
        let Column::Float(values) = &batch.columns()[2] else { panic!() };
        let tree = evalexpr::build_operator_tree::<DefaultNumericTypes>(source).unwrap();
        let start = Instant::now();
        let mut kept = 0;
        for (sensor, &value) in sensors.iter().zip(values) {
            let mut context = HashMapContext::<DefaultNumericTypes>::new();
            context.set_value("sensor".into(), AstValue::String(sensor.to_owned())).unwrap();
            context.set_value("value".into(), AstValue::Float(value)).unwrap();
            kept += usize::from(tree.eval_boolean_with_context(&context).unwrap());
        }
        let per_record = start.elapsed();

        let expr = Expr::compile(source, batch.schema()).unwrap();
        let start = Instant::now();
        let Column::Bool(mask) = expr.eval(&batch).unwrap() else { panic!() };
        let columnar = start.elapsed();
        assert_eq!(kept, mask.iter().filter(|&&m| m).count());
        let rate = |d: std::time::Duration| batch.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "evalexpr per record: {:.1} M records/s; columnar: {:.1} M records/s",
            rate(per_record),
            rate(columnar)
        );
    }
}
