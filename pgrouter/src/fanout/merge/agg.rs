//! Combining the shards' partial aggregates of one group, column by
//! column, into the value one server would have computed, encoded in the
//! column's own type and format (so the shards' RowDescription stays right).

use pgrouter_parser::fanout::{Agg, Role};

use super::numeric::{Dec, Numeric};
use super::row::Row;
use super::types::{self, key, ColType, Key};
use super::{datetime, floatfmt, MergeError};

/// The running state of one column of one group.
#[derive(Debug, Clone)]
pub enum Acc {
    /// A grouping value: the first row's.
    First(Option<Option<Vec<u8>>>),
    Count(i64),
    SumInt(Option<i64>),
    SumNum(Option<Numeric>),
    SumF4(Option<f32>),
    SumF8(Option<f64>),
    /// interval: (months, days, µs), added field by field like `interval_pl`.
    SumIv(Option<(i32, i32, i64)>),
    Best {
        best: Option<(Key, Vec<u8>)>,
        max: bool,
    },
    Bool {
        acc: Option<bool>,
        and: bool,
    },
    /// avg: numeric ones come from the sum and count columns at the end;
    /// float ones sum here (see [`Acc::add`]).
    Avg {
        sum: usize,
        count: usize,
        sx: f64,
    },
}

/// Checks a column's role against its type once, at the RowDescription.
pub fn check(
    role: &Role,
    t: ColType,
    types: &[ColType],
    resolve: &dyn Fn(pgrouter_parser::fanout::Col) -> usize,
) -> Result<(), MergeError> {
    let name = types::type_name(t.oid);
    let refuse = |what: &str| {
        Err(MergeError::unsupported(format!(
            "{what}() of type {name} across shards is not supported"
        )))
    };
    match role {
        Role::Group => Ok(()),
        Role::Agg(Agg::Count)
            if matches!(
                t.oid,
                types::INT8 | types::INT4 | types::INT2 | types::NUMERIC
            ) =>
        {
            Ok(())
        }
        Role::Agg(Agg::Count) => refuse("count"),
        Role::Agg(Agg::Sum)
            if matches!(
                t.oid,
                types::INT8 | types::NUMERIC | types::FLOAT4 | types::FLOAT8 | types::INTERVAL
            ) =>
        {
            Ok(())
        }
        Role::Agg(Agg::Sum) => refuse("sum"),
        Role::Agg(Agg::Min { .. } | Agg::Max { .. }) if t.is_ordered() => Ok(()),
        Role::Agg(Agg::Min { .. }) => refuse("min"),
        Role::Agg(Agg::Max { .. }) => refuse("max"),
        Role::Agg(Agg::BoolAnd | Agg::BoolOr) if t.oid == types::BOOL => Ok(()),
        Role::Agg(Agg::BoolAnd) => refuse("bool_and"),
        Role::Agg(Agg::BoolOr) => refuse("bool_or"),
        Role::Agg(Agg::Avg { sum, count }) => {
            let (s, c) = (types.get(resolve(*sum)), types.get(resolve(*count)));
            let ok = matches!(
                (t.oid, s.map(|s| s.oid), c.map(|c| c.oid)),
                (
                    types::NUMERIC,
                    Some(types::INT8 | types::NUMERIC),
                    Some(types::INT8)
                ) | (
                    types::FLOAT8,
                    Some(types::FLOAT4 | types::FLOAT8),
                    Some(types::INT8)
                )
            );
            if ok {
                Ok(())
            } else {
                refuse("avg")
            }
        }
    }
}

impl Acc {
    pub fn new(role: &Role, t: ColType, sum: usize, count: usize) -> Acc {
        match role {
            Role::Group => Acc::First(None),
            Role::Agg(Agg::Count) => Acc::Count(0),
            Role::Agg(Agg::Sum) => match t.oid {
                types::INT8 => Acc::SumInt(None),
                types::NUMERIC => Acc::SumNum(None),
                types::FLOAT4 => Acc::SumF4(None),
                types::INTERVAL => Acc::SumIv(None),
                _ => Acc::SumF8(None),
            },
            Role::Agg(Agg::Min { .. }) => Acc::Best {
                best: None,
                max: false,
            },
            Role::Agg(Agg::Max { .. }) => Acc::Best {
                best: None,
                max: true,
            },
            Role::Agg(Agg::BoolAnd) => Acc::Bool {
                acc: None,
                and: true,
            },
            Role::Agg(Agg::BoolOr) => Acc::Bool {
                acc: None,
                and: false,
            },
            Role::Agg(Agg::Avg { .. }) => Acc::Avg {
                sum,
                count,
                sx: 0.0,
            },
        }
    }

    /// Adds column `i` of a shard's partial row.
    pub fn add(&mut self, row: &Row, i: usize, types: &[ColType]) -> Result<(), MergeError> {
        let t = types[i];
        let v = row.get(i);
        let k = |b: &[u8]| key(t, b, true);
        match self {
            Acc::First(first) => {
                if first.is_none() {
                    *first = Some(v.map(<[u8]>::to_vec));
                }
            }
            Acc::Count(n) => {
                let c = match v.map(k).transpose()? {
                    Some(Key::Int(c)) => c,
                    // count(...)::numeric: an integral numeric.
                    Some(Key::Numeric(c)) => c.0.to_text().parse().map_err(|_| bigint_range())?,
                    _ => 0,
                };
                *n = n.checked_add(c).ok_or_else(bigint_range)?;
            }
            Acc::SumInt(s) => {
                if let Some(Key::Int(x)) = v.map(k).transpose()? {
                    *s = Some(s.unwrap_or(0).checked_add(x).ok_or_else(bigint_range)?);
                }
            }
            Acc::SumNum(s) => {
                if let Some(b) = v {
                    let x = if t.binary {
                        Numeric::parse_binary(b)
                    } else {
                        std::str::from_utf8(b).ok().and_then(Numeric::parse_text)
                    };
                    let x = x.ok_or_else(|| {
                        MergeError::internal("a shard sent a malformed numeric".into())
                    })?;
                    *s = Some(match s.take() {
                        Some(acc) => acc.add(&x),
                        None => x,
                    });
                }
            }
            Acc::SumF4(s) => {
                if let Some(Key::Float(x)) = v.map(k).transpose()? {
                    let (a, b) = (s.unwrap_or(0.0), x.0 as f32);
                    *s = Some(float_add(
                        a,
                        b,
                        (a + b).is_infinite() && a.is_finite() && b.is_finite(),
                    )?);
                }
            }
            Acc::SumF8(s) => {
                if let Some(Key::Float(x)) = v.map(k).transpose()? {
                    let (a, b) = (s.unwrap_or(0.0), x.0);
                    *s = Some(float_add(
                        a,
                        b,
                        (a + b).is_infinite() && a.is_finite() && b.is_finite(),
                    )?);
                }
            }
            Acc::SumIv(s) => {
                if let Some(b) = v {
                    let x = interval_parts(t, b)?;
                    *s = Some(match s {
                        None => x,
                        Some(a) => (|| {
                            Some((
                                a.0.checked_add(x.0)?,
                                a.1.checked_add(x.1)?,
                                a.2.checked_add(x.2)?,
                            ))
                        })()
                        .ok_or_else(|| MergeError {
                            sqlstate: "22008",
                            message: "interval out of range".into(),
                        })?,
                    });
                }
            }
            Acc::Best { best, max } => {
                if let Some(b) = v {
                    let x = k(b)?;
                    let better = match best {
                        None => true,
                        Some((cur, _)) => {
                            if *max {
                                x > *cur
                            } else {
                                x < *cur
                            }
                        }
                    };
                    if better {
                        *best = Some((x, b.to_vec()));
                    }
                }
            }
            Acc::Bool { acc, and } => {
                if let Some(Key::Bool(x)) = v.map(k).transpose()? {
                    *acc = Some(match acc {
                        None => x,
                        Some(a) => {
                            if *and {
                                *a && x
                            } else {
                                *a || x
                            }
                        }
                    });
                }
            }
            Acc::Avg { sum, count, sx } => {
                // float avg: a float8 partial sum is exact input; a float4 one
                // lost precision on the shard, so its avg times count is used.
                if t.oid == types::FLOAT8 {
                    let (st, n) = (
                        types[*sum],
                        row.get(*count)
                            .map(|b| key(types[*count], b, true))
                            .transpose()?,
                    );
                    let n = match n {
                        Some(Key::Int(n)) => n,
                        _ => 0,
                    };
                    if n > 0 {
                        let part = if st.oid == types::FLOAT8 {
                            row.get(*sum).map(|b| key(st, b, true)).transpose()?
                        } else {
                            v.map(k).transpose()?
                        };
                        if let Some(Key::Float(x)) = part {
                            let add = if st.oid == types::FLOAT8 {
                                x.0
                            } else {
                                x.0 * n as f64
                            };
                            let over =
                                (*sx + add).is_infinite() && sx.is_finite() && add.is_finite();
                            *sx = float_add(*sx, add, over)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The merged value of column `i`, given the group's other accumulators.
    pub fn finish(&self, t: ColType, group: &[Acc]) -> Result<Option<Vec<u8>>, MergeError> {
        Ok(match self {
            Acc::First(v) => v.clone().flatten(),
            Acc::Count(n) => Some(count_value(*n, t)?),
            Acc::SumInt(s) => s.map(|s| int8(s, t)),
            Acc::SumNum(s) => s.as_ref().map(|s| numeric(s, t)),
            Acc::SumF4(s) => s.map(|s| {
                if t.binary {
                    s.to_be_bytes().to_vec()
                } else {
                    floatfmt::float4(s).into_bytes()
                }
            }),
            Acc::SumF8(s) => s.map(|s| float8(s, t)),
            Acc::SumIv(s) => s.map(|(months, days, micros)| {
                if t.binary {
                    let mut b = micros.to_be_bytes().to_vec();
                    b.extend_from_slice(&days.to_be_bytes());
                    b.extend_from_slice(&months.to_be_bytes());
                    b
                } else {
                    datetime::interval_text(months, days, micros).into_bytes()
                }
            }),
            Acc::Best { best, .. } => best.as_ref().map(|b| b.1.clone()),
            Acc::Bool { acc, .. } => acc.map(|b| {
                if t.binary {
                    vec![b as u8]
                } else {
                    vec![if b { b't' } else { b'f' }]
                }
            }),
            Acc::Avg { sum, count, sx } => {
                let n = match group[*count] {
                    Acc::Count(n) if n > 0 => n,
                    _ => return Ok(None),
                };
                if t.oid == types::FLOAT8 {
                    return Ok(Some(float8(sx / n as f64, t)));
                }
                let total = match &group[*sum] {
                    Acc::SumInt(Some(s)) => Numeric::Fin(Dec::from_i64(*s)),
                    Acc::SumNum(Some(s)) => s.clone(),
                    _ => return Ok(None),
                };
                Some(numeric(&total.div_count(n), t))
            }
        })
    }
}

/// An interval value as (months, days, µs).
fn interval_parts(t: ColType, b: &[u8]) -> Result<(i32, i32, i64), MergeError> {
    let bad = || {
        MergeError::unsupported(
            "an interval across shards that is not in IntervalStyle postgres".into(),
        )
    };
    if t.binary {
        let b: [u8; 16] = b
            .try_into()
            .map_err(|_| MergeError::internal("a shard sent a malformed interval".into()))?;
        let micros = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let days = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let months = i32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
        return Ok((months, days, micros));
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(datetime::interval_parts)
        .ok_or_else(bad)
}

/// `a + b`, or PostgreSQL's error when finite values overflowed. A NaN
/// partial `b` is the result as it is: it is the NaN PostgreSQL read
/// (positive), which its own sum keeps whatever comes next, while the
/// hardware's `a + b` keeps the negative NaN of an earlier `inf + -inf`.
fn float_add<F: std::ops::Add<Output = F> + PartialEq + Copy>(
    a: F,
    b: F,
    overflowed: bool,
) -> Result<F, MergeError> {
    if overflowed {
        return Err(MergeError {
            sqlstate: "22003",
            message: "value out of range: overflow".into(),
        });
    }
    #[allow(clippy::eq_op)]
    let b_is_nan = b != b;
    if b_is_nan {
        return Ok(b);
    }
    Ok(a + b)
}

/// A merged count in its column's type (`count(*)::int` and friends),
/// with PostgreSQL's error when the cast of the total overflows.
fn count_value(n: i64, t: ColType) -> Result<Vec<u8>, MergeError> {
    let range = |what: &str| MergeError {
        sqlstate: "22003",
        message: format!("{what} out of range"),
    };
    Ok(match t.oid {
        types::INT4 => {
            let v = i32::try_from(n).map_err(|_| range("integer"))?;
            if t.binary {
                v.to_be_bytes().to_vec()
            } else {
                v.to_string().into_bytes()
            }
        }
        types::INT2 => {
            let v = i16::try_from(n).map_err(|_| range("smallint"))?;
            if t.binary {
                v.to_be_bytes().to_vec()
            } else {
                v.to_string().into_bytes()
            }
        }
        types::NUMERIC => numeric(&Numeric::Fin(Dec::from_i64(n)), t),
        _ => int8(n, t),
    })
}

fn bigint_range() -> MergeError {
    MergeError {
        sqlstate: "22003",
        message: "bigint out of range".into(),
    }
}

fn int8(v: i64, t: ColType) -> Vec<u8> {
    if t.binary {
        v.to_be_bytes().to_vec()
    } else {
        v.to_string().into_bytes()
    }
}

fn float8(v: f64, t: ColType) -> Vec<u8> {
    if t.binary {
        v.to_be_bytes().to_vec()
    } else {
        floatfmt::float8(v).into_bytes()
    }
}

fn numeric(v: &Numeric, t: ColType) -> Vec<u8> {
    if t.binary {
        v.to_binary()
    } else {
        v.to_text().into_bytes()
    }
}

#[cfg(test)]
#[test]
fn a_nan_partial_stays_postgresqls_nan() {
    // inf + -inf is the hardware's negative NaN; a shard's NaN is positive.
    let sum = float_add(f64::INFINITY, f64::NEG_INFINITY, false).unwrap();
    let nan = f64::from_bits(0x7ff8_0000_0000_0000);
    assert_eq!(float_add(sum, nan, false).unwrap().to_bits(), nan.to_bits());
    assert!(float_add(nan, 1.0, false).unwrap().is_nan());
}
