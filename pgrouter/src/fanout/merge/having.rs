//! HAVING evaluated on a merged group, with SQL's three-valued logic: a
//! group is kept only when the predicate is true (not false, not NULL).
//! A constant is read as a value of the column it is compared with;
//! integer and numeric columns compare as exact decimals (`count(*) > 2.5`).

use std::cmp::Ordering;

use pgrouter_parser::fanout::{CmpOp, Col, Operand, Predicate};

use super::numeric::{Dec, Numeric};
use super::types::{self, key, ColType, Key, OrdF64};
use super::MergeError;

/// A merged row: its values and their types, and how columns resolve.
pub struct Group<'a> {
    pub values: &'a [Option<Vec<u8>>],
    pub types: &'a [ColType],
    pub resolve: &'a dyn Fn(Col) -> usize,
}

pub fn eval(p: &Predicate, g: &Group) -> Result<Option<bool>, MergeError> {
    Ok(match p {
        Predicate::And(ps) => {
            let mut out = Some(true);
            for p in ps {
                match eval(p, g)? {
                    Some(false) => return Ok(Some(false)),
                    None => out = None,
                    Some(true) => {}
                }
            }
            out
        }
        Predicate::Or(ps) => {
            let mut out = Some(false);
            for p in ps {
                match eval(p, g)? {
                    Some(true) => return Ok(Some(true)),
                    None => out = None,
                    Some(false) => {}
                }
            }
            out
        }
        Predicate::Not(p) => eval(p, g)?.map(|b| !b),
        Predicate::IsNull { operand, negated } => {
            let null = match operand {
                Operand::Column(c) => g.values[(g.resolve)(*c)].is_none(),
                Operand::Null => true,
                _ => false,
            };
            Some(null != *negated)
        }
        Predicate::Truth(operand) => match operand {
            Operand::Column(c) => {
                let i = (g.resolve)(*c);
                match &g.values[i] {
                    None => None,
                    Some(v) => match key(g.types[i], v, true)? {
                        Key::Bool(b) => Some(b),
                        _ => {
                            return Err(MergeError::unsupported(
                                "a HAVING condition that is not boolean".into(),
                            ))
                        }
                    },
                }
            }
            Operand::Const(c) => Some(matches!(c.as_str(), "t" | "true")),
            Operand::Bound { bytes, .. } => Some(bytes.first().is_some_and(|b| *b != 0)),
            Operand::Param(n) | Operand::CastParam(n) => return Err(unresolved(*n)),
            _ => None,
        },
        Predicate::Compare { left, op, right } => {
            let Operand::Column(c) = left else {
                return Err(MergeError::internal("HAVING compares no column".into()));
            };
            let i = (g.resolve)(*c);
            let t = g.types[i];
            let Some(lv) = &g.values[i] else {
                return Ok(None);
            };
            let ord = match right {
                Operand::Null => return Ok(None),
                Operand::Param(n) | Operand::CastParam(n) => return Err(unresolved(*n)),
                // PostgreSQL gives a parameter without a declared type the
                // type of the other side (numeric for `max(amount) > $1`),
                // and the client encoded it so.
                Operand::Bound { declared, bytes } => {
                    let u = ColType {
                        oid: if *declared == 0 { t.oid } else { *declared },
                        binary: true,
                    };
                    compare_values(t, lv, u, bytes)?
                }
                Operand::Column(c2) => {
                    let j = (g.resolve)(*c2);
                    let Some(rv) = &g.values[j] else {
                        return Ok(None);
                    };
                    compare_values(t, lv, g.types[j], rv)?
                }
                Operand::Const(text) => compare_const(t, lv, text)?,
            };
            Some(match op {
                CmpOp::Eq => ord == Ordering::Equal,
                CmpOp::Ne => ord != Ordering::Equal,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            })
        }
    })
}

/// A parameter whose value could not be read: sent in binary format under
/// a cast, with no type declared in Parse.
fn unresolved(n: usize) -> MergeError {
    MergeError::unsupported(format!(
        "HAVING parameter ${n} in binary format under a cast across shards (its type is unknown to \
         the router); hint: declare the parameter's type or send it in text format"
    ))
}

/// A number column's value as an exact decimal (None: not a number type).
fn as_numeric(k: &Key) -> Option<Numeric> {
    match k {
        Key::Int(i) => Some(Numeric::Fin(Dec::from_i64(*i))),
        Key::Numeric(n) => Some(n.0.clone()),
        _ => None,
    }
}

fn compare_values(t: ColType, a: &[u8], u: ColType, b: &[u8]) -> Result<Ordering, MergeError> {
    let (ka, kb) = (key(t, a, true)?, key(u, b, true)?);
    if let (Some(x), Some(y)) = (as_numeric(&ka), as_numeric(&kb)) {
        return Ok(x.cmp(&y));
    }
    if let (Key::Float(x), Some(y)) = (&ka, as_numeric(&kb)) {
        return Ok(x.cmp(&OrdF64(y.to_text().parse().unwrap_or(f64::NAN))));
    }
    if let (Some(x), Key::Float(y)) = (as_numeric(&ka), &kb) {
        return Ok(OrdF64(x.to_text().parse().unwrap_or(f64::NAN)).cmp(y));
    }
    Ok(ka.cmp(&kb))
}

fn compare_const(t: ColType, v: &[u8], text: &str) -> Result<Ordering, MergeError> {
    let kv = key(t, v, true)?;
    let bad = || {
        MergeError::unsupported(format!(
            "HAVING constant '{text}' compared with a {} value",
            types::type_name(t.oid)
        ))
    };
    if let Some(x) = as_numeric(&kv) {
        let y = Numeric::parse_text(text.trim()).ok_or_else(bad)?;
        return Ok(x.cmp(&y));
    }
    if let Key::Float(x) = kv {
        let y: f64 = text.trim().parse().map_err(|_| bad())?;
        return Ok(x.cmp(&OrdF64(y)));
    }
    let as_text = ColType {
        oid: t.oid,
        binary: false,
    };
    let kc = key(as_text, text.as_bytes(), true).map_err(|_| bad())?;
    Ok(kv.cmp(&kc))
}
