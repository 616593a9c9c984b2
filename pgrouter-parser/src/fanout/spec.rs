//! What the merger must do with the shards' rows: plain data, built by
//! [`super::plan_read`] once per statement text and handed to the
//! executor's merger for every execution.
//!
//! Column positions are [`Col`]s rather than plain indexes because a select
//! list with `*` has a width known only from the shards' RowDescription; the
//! planner's own hidden columns always come last, so they are counted from
//! the start of the hidden block.

/// How to combine the shards' results of one statement.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergeSpec {
    /// Number of visible columns when the select list has no `*`; `None`
    /// when it has one (the RowDescription tells: total minus `hidden`).
    pub visible: Option<usize>,
    /// Columns the planner appended after the statement's own; the client
    /// never sees them.
    pub hidden: usize,
    /// ORDER BY, most significant first. Empty: any order.
    pub order_by: Vec<SortKey>,
    /// LIMIT; `None` for no LIMIT, `LIMIT ALL` or `LIMIT NULL`.
    pub limit: Option<Count>,
    /// OFFSET; `None` for none (or NULL).
    pub offset: Option<Count>,
    /// `SELECT DISTINCT` over the visible columns.
    pub distinct: bool,
    /// Aggregates and/or GROUP BY: rows are partial groups to combine.
    pub aggregate: Option<Aggregation>,
}

/// A column of the shards' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    /// The n-th column of the select list (before any `*`).
    Visible(usize),
    /// The n-th hidden column the planner appended.
    Hidden(usize),
}

impl Col {
    /// The column's index in a row of `total` columns of which the last
    /// `hidden` are hidden.
    pub fn index(self, total: usize, hidden: usize) -> usize {
        match self {
            Col::Visible(i) => i,
            Col::Hidden(i) => total - hidden + i,
        }
    }
}

/// One ORDER BY key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub column: Col,
    pub descending: bool,
    /// Resolved with PostgreSQL's defaults: NULLS LAST for ASC, FIRST for DESC.
    pub nulls_first: bool,
    /// The key was written with `COLLATE "C"` (or `"POSIX"`): text orders by bytes.
    pub collate_c: bool,
}

/// A LIMIT or OFFSET value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    Const(i64),
    /// Parameter `$n`: resolved per execution ([`MergeSpec::resolve_params`]).
    Param(usize),
}

/// GROUP BY and aggregates. The select list has no `*` here, so every
/// column's role is known.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregation {
    /// The role of every column, visible then hidden.
    pub columns: Vec<Role>,
    /// The columns whose values together identify a group (empty: one group).
    pub group_by: Vec<Col>,
    /// HAVING, evaluated on the merged groups.
    pub having: Option<Predicate>,
}

/// What a column of a grouped result holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A grouping value or an expression of grouping values: the same in
    /// every partial row of a group, any of them will do.
    Group,
    /// An aggregate of the partial values.
    Agg(Agg),
}

/// How the shards' partial values of an aggregate combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agg {
    /// `count(*)`/`count(x)`: the sum of the partial counts.
    Count,
    /// `sum(x)`: the sum of the partial sums, NULL when all are NULL.
    Sum,
    /// `min(x)`; `collate_c` as in [`SortKey`].
    Min {
        collate_c: bool,
    },
    Max {
        collate_c: bool,
    },
    BoolAnd,
    BoolOr,
    /// `avg(x)`: the column is the shards' own avg (it has the right type
    /// in the RowDescription); its merged value is computed from the hidden
    /// `sum(x)` and `count(x)` columns.
    Avg {
        sum: Col,
        count: Col,
    },
}

/// A HAVING condition over merged groups.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
    Compare {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    IsNull {
        operand: Operand,
        negated: bool,
    },
    /// A boolean column by itself (`HAVING bool_and(x)`).
    Truth(Operand),
}

/// A value in a [`Predicate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Column(Col),
    /// A literal's text, read as a value of the other side's type.
    Const(String),
    /// Parameter `$n`: resolved per execution.
    Param(usize),
    /// Parameter `$n` under a cast (`$1::numeric`): PostgreSQL gives it the
    /// cast's type, not the other side's, so a value sent in binary format
    /// without a type declared in Parse cannot be read (refused).
    CastParam(usize),
    /// A parameter's value sent in binary format, and the type declared for
    /// it in Parse (0: none; PostgreSQL then infers the other side's type,
    /// which the merge reads it as). Reading the bytes as text, or guessing
    /// an integer from their length, would compare against a wrong value.
    Bound {
        declared: u32,
        bytes: Vec<u8>,
    },
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// The operator with its sides swapped (`a < b` is `b > a`).
    pub fn swapped(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }
}

impl MergeSpec {
    /// Parameter numbers the spec needs values of (LIMIT, OFFSET, HAVING).
    pub fn params(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for c in [&self.limit, &self.offset].into_iter().flatten() {
            if let Count::Param(n) = c {
                out.push(*n);
            }
        }
        if let Some(p) = self.aggregate.as_ref().and_then(|a| a.having.as_ref()) {
            p.params(&mut out);
        }
        out
    }

    /// HAVING parameters under a cast still unresolved after
    /// [`Self::resolve_bound_params`]: sent in binary format with no type
    /// declared, so their value cannot be read.
    pub fn unreadable_params(&self) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(p) = self.aggregate.as_ref().and_then(|a| a.having.as_ref()) {
            p.params(&mut out);
        }
        out.retain(|n| self.aggregate.as_ref().and_then(|a| a.having.as_ref()).is_some_and(|p| p.casts(*n)));
        out
    }

    /// The spec with every `$n` replaced by its value for one execution:
    /// `value(n)` gives the parameter's text (`None` for NULL). A LIMIT or
    /// OFFSET that is not an integer is the error PostgreSQL would give.
    pub fn resolve_params(&self, value: &dyn Fn(usize) -> Option<String>) -> Result<MergeSpec, (&'static str, String)> {
        self.resolve_bound_params(&|n| value(n).map(Operand::Const))
    }

    /// Like [`Self::resolve_params`], with each value as the Bind sent it:
    /// [`Operand::Const`] for text format, [`Operand::Bound`] for binary.
    pub fn resolve_bound_params(
        &self,
        value: &dyn Fn(usize) -> Option<Operand>,
    ) -> Result<MergeSpec, (&'static str, String)> {
        let mut spec = self.clone();
        for c in [&mut spec.limit, &mut spec.offset] {
            if let Some(Count::Param(n)) = c {
                *c = match value(*n) {
                    None | Some(Operand::Null) => None,
                    Some(Operand::Bound { bytes, .. }) => Some(Count::Const(match bytes.len() {
                        2 => i16::from_be_bytes([bytes[0], bytes[1]]).into(),
                        4 => i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).into(),
                        8 => i64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8])),
                        _ => return Err(("22P03", "incorrect binary data format in bind parameter".to_string())),
                    })),
                    Some(Operand::Const(text)) => Some(Count::Const(
                        text.trim()
                            .parse::<i64>()
                            .map_err(|_| ("22P02", format!("invalid input syntax for type bigint: \"{text}\"")))?,
                    )),
                    Some(_) => None,
                };
            }
        }
        if let Some(p) = spec.aggregate.as_mut().and_then(|a| a.having.as_mut()) {
            p.resolve(value);
        }
        Ok(spec)
    }
}

impl Predicate {
    /// `$n` appears under a cast ([`Operand::CastParam`]).
    fn casts(&self, n: usize) -> bool {
        match self {
            Predicate::And(v) | Predicate::Or(v) => v.iter().any(|p| p.casts(n)),
            Predicate::Not(p) => p.casts(n),
            Predicate::Compare { left, right, .. } => [left, right].iter().any(|o| **o == Operand::CastParam(n)),
            Predicate::IsNull { operand: o, .. } | Predicate::Truth(o) => *o == Operand::CastParam(n),
        }
    }

    fn params(&self, out: &mut Vec<usize>) {
        match self {
            Predicate::And(v) | Predicate::Or(v) => v.iter().for_each(|p| p.params(out)),
            Predicate::Not(p) => p.params(out),
            Predicate::Compare { left, right, .. } => {
                for o in [left, right] {
                    if let Operand::Param(n) | Operand::CastParam(n) = o {
                        out.push(*n);
                    }
                }
            }
            Predicate::IsNull { operand: o, .. } | Predicate::Truth(o) => {
                if let Operand::Param(n) | Operand::CastParam(n) = o {
                    out.push(*n);
                }
            }
        }
    }

    fn resolve(&mut self, value: &dyn Fn(usize) -> Option<Operand>) {
        let fix = |o: &mut Operand| match o {
            Operand::Param(n) => *o = value(*n).unwrap_or(Operand::Null),
            Operand::CastParam(n) => match value(*n) {
                // Binary without a declared type: its type is the cast's,
                // unknown here; left unresolved, the merge refuses it.
                Some(Operand::Bound { declared: 0, .. }) => {}
                v => *o = v.unwrap_or(Operand::Null),
            },
            _ => {}
        };
        match self {
            Predicate::And(v) | Predicate::Or(v) => v.iter_mut().for_each(|p| p.resolve(value)),
            Predicate::Not(p) => p.resolve(value),
            Predicate::Compare { left, right, .. } => {
                fix(left);
                fix(right);
            }
            Predicate::IsNull { operand, .. } | Predicate::Truth(operand) => fix(operand),
        }
    }
}
