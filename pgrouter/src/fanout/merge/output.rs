//! The merger's work per message: the RowDescription fixes the layout
//! (and refuses what cannot be compared), rows are emitted through
//! DISTINCT/OFFSET/LIMIT, the k-way merge picks the least head, and
//! groups are finished, filtered by HAVING, sorted and emitted.

use std::cmp::Ordering;

use pgrouter_parser::fanout::{Agg, CmpOp, Col, Operand, Predicate, Role, SortKey};

use super::agg::{self, Acc};
use super::having;
use super::row::{self, Description, Mismatch, Row};
use super::types::{self, key, ColType, Key};
use super::{Head, Layout, MergeError, Merger};

/// The [`Col`] of column `i` of a row whose first `visible` are visible.
fn column_at(i: usize, visible: usize) -> Col {
    if i < visible {
        Col::Visible(i)
    } else {
        Col::Hidden(i - visible)
    }
}

/// The sort keys of a row.
pub(super) fn sort_keys(layout: &Layout, row: &Row) -> Result<Vec<Option<Key>>, MergeError> {
    layout
        .sort
        .iter()
        .map(|(i, _)| {
            row.get(*i)
                .map(|b| key(layout.types[*i], b, true))
                .transpose()
        })
        .collect()
}

/// Orders two rows' sort keys (ASC/DESC, NULLS FIRST/LAST).
fn compare(sort: &[(usize, SortKey)], a: &[Option<Key>], b: &[Option<Key>]) -> Ordering {
    for ((_, k), (x, y)) in sort.iter().zip(a.iter().zip(b)) {
        let ord = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                if k.descending {
                    y.cmp(x)
                } else {
                    x.cmp(y)
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

impl Merger {
    pub(super) fn describe(&mut self, body: &[u8]) -> Result<(), MergeError> {
        let desc = Description::parse(body)?;
        if let Some(layout) = &self.layout {
            return match layout.desc.compare(&desc, &self.enums) {
                Ok(()) => Ok(()),
                Err(Mismatch::Columns) => Err(MergeError::internal(
                    "the shards' results have different columns".into(),
                )),
                Err(Mismatch::BinaryUserType(i)) => Err(MergeError::unsupported(format!(
                    "pgrouter: result column {} is of a user-defined type in binary format across shards, \
                     which is not supported (its type has another OID on each shard); HINT: ask for it in \
                     text format, or cast it to a built-in type",
                    i + 1
                ))),
            };
        }
        let types = desc.types();
        let hidden = self.spec.hidden;
        if types.len() < hidden || self.spec.visible.is_some_and(|v| v + hidden != types.len()) {
            return Err(MergeError::internal(
                "the shards' results do not have the planned columns".into(),
            ));
        }
        let total = types.len();
        let in_range = |i: usize| {
            if i < total {
                Ok(i)
            } else {
                Err(MergeError::internal(
                    "a merge column is out of range".into(),
                ))
            }
        };
        let mut sort = Vec::new();
        for k in &self.spec.order_by {
            let i = in_range(k.column.index(total, hidden))?;
            self.check_ordered(types[i], k.collate_c, k.column, "ORDER BY")?;
            sort.push((i, k.clone()));
        }
        let layout = Layout {
            desc,
            types: types.clone(),
            visible: total - hidden,
            hidden,
            sort,
        };
        // The probed shard's enum columns, under the OIDs of the shard
        // that described the result first.
        self.enums = self
            .enum_columns
            .iter()
            .filter_map(|&c| types.get(layout.resolve(c)).map(|t| t.oid))
            .collect();
        if let Some(a) = &self.spec.aggregate {
            if a.columns.len() != total {
                return Err(MergeError::internal(
                    "the shards' results do not have the planned columns".into(),
                ));
            }
            for (i, role) in a.columns.iter().enumerate() {
                agg::check(role, types[i], &types, &|c| layout.resolve(c))?;
                if let Role::Agg(Agg::Sum | Agg::Avg { .. }) = role {
                    self.check_computed_text(types[i])?;
                }
                if let Role::Agg(Agg::Min { collate_c } | Agg::Max { collate_c }) = role {
                    let col = column_at(i, layout.visible);
                    self.check_ordered(types[i], *collate_c, col, "min()/max()")?;
                }
            }
            for c in &a.group_by {
                let t = types[in_range(layout.resolve(*c))?];
                t.check_keyable(&self.enums)?;
                self.check_equality(t, *c, "GROUP BY")?;
                self.check_date_style(t)?;
            }
            if let Some(p) = &a.having {
                self.check_having(p, &types, &layout)?;
            }
        }
        if self.spec.distinct {
            for (i, &t) in types[..layout.visible].iter().enumerate() {
                t.check_keyable(&self.enums)?;
                if self.spec.visible.is_some() {
                    self.check_equality(t, Col::Visible(i), "DISTINCT")?;
                }
                self.check_date_style(t)?;
            }
        }
        if self.ctx.send_row_description {
            layout.desc.write(layout.visible, &mut self.pending);
        }
        self.layout = Some(layout);
        Ok(())
    }

    /// A value the router computes (sum, avg) and writes in text format:
    /// float and interval text depend on settings it follows only at
    /// their defaults.
    fn check_computed_text(&self, t: ColType) -> Result<(), MergeError> {
        if t.binary {
            return Ok(());
        }
        if matches!(t.oid, types::FLOAT4 | types::FLOAT8) && !self.ctx.float_digits_exact {
            return Err(MergeError::unsupported(
                "merging sum()/avg() of float values in text format across shards needs \
                 extra_float_digits 1 or more (hint: SET extra_float_digits = 1, or use binary format)"
                    .into(),
            ));
        }
        self.check_date_style(t)
    }

    fn check_date_style(&self, t: ColType) -> Result<(), MergeError> {
        if !t.binary && t.oid == types::INTERVAL && !self.ctx.intervalstyle_postgres {
            return Err(MergeError::unsupported(
                "merging interval values in text format across shards needs IntervalStyle postgres \
                 (hint: SET IntervalStyle = postgres)"
                    .into(),
            ));
        }
        if !t.binary
            && !self.ctx.datestyle_iso
            && matches!(
                t.oid,
                types::DATE | types::TIMESTAMP | types::TIMESTAMPTZ | types::TIMETZ
            )
        {
            return Err(MergeError::unsupported(format!(
                "merging {} values in text format across shards needs DateStyle ISO (hint: SET DateStyle = ISO)",
                types::type_name(t.oid)
            )));
        }
        Ok(())
    }

    fn check_ordered(
        &self,
        t: ColType,
        collate_c: bool,
        col: Col,
        what: &str,
    ) -> Result<(), MergeError> {
        if !t.is_ordered() {
            return Err(MergeError::unsupported(format!(
                "{what} on type {} across shards is not supported",
                types::type_name(t.oid)
            )));
        }
        if t.is_text() && !collate_c && !self.bytes_exact(col, true) {
            return Err(MergeError::unsupported(format!(
                "{what} text across shards needs a byte-ordered collation (C, POSIX or C.UTF-8; \
                 hint: add COLLATE \"C\" to the expression)"
            )));
        }
        self.check_date_style(t)
    }

    /// GROUP BY / DISTINCT on text merge equal bytes: exact unless the
    /// collation is nondeterministic (equal strings with other bytes).
    fn check_equality(&self, t: ColType, col: Col, what: &str) -> Result<(), MergeError> {
        if t.is_text() && !self.bytes_exact(col, false) {
            return Err(MergeError::unsupported(format!(
                "{what} on text in a nondeterministic collation across shards is not supported"
            )));
        }
        Ok(())
    }

    /// HAVING `<`, `>` ... on text columns needs them ordered by bytes.
    fn check_having(
        &self,
        p: &Predicate,
        types: &[ColType],
        layout: &Layout,
    ) -> Result<(), MergeError> {
        match p {
            Predicate::And(v) | Predicate::Or(v) => v
                .iter()
                .try_for_each(|p| self.check_having(p, types, layout)),
            Predicate::Not(p) => self.check_having(p, types, layout),
            Predicate::Compare { left, op, right } => {
                for o in [left, right] {
                    let Operand::Column(c) = o else { continue };
                    let Some(&t) = types.get(layout.resolve(*c)) else {
                        continue;
                    };
                    let order = !matches!(op, CmpOp::Eq | CmpOp::Ne);
                    if t.is_text() && !self.bytes_exact(*c, order) {
                        return Err(MergeError::unsupported(
                            "HAVING comparing text by order across shards needs a byte-ordered \
                             collation (hint: compare with = or <>)"
                                .into(),
                        ));
                    }
                }
                Ok(())
            }
            Predicate::IsNull { .. } | Predicate::Truth(_) => Ok(()),
        }
    }

    /// DISTINCT, OFFSET and LIMIT, then the row goes out.
    pub(super) fn emit(&mut self, row: &Row) -> Result<(), MergeError> {
        let layout = self.layout.as_ref().expect("rows come after the layout");
        if self.spec.distinct {
            let k = (0..layout.visible)
                .map(|i| {
                    row.get(i)
                        .map(|b| key(layout.types[i], b, true))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !self.seen.insert(k) {
                return Ok(());
            }
        }
        if self.skipped < self.offset {
            self.skipped += 1;
            return Ok(());
        }
        if self.limit_met() {
            return Ok(());
        }
        row.write(layout.visible, &mut self.pending);
        self.sent += 1;
        Ok(())
    }

    /// A plain union's row, unchanged (OFFSET and LIMIT still apply).
    pub(super) fn emit_body(&mut self, body: &[u8]) -> Result<(), MergeError> {
        if self.skipped < self.offset {
            self.skipped += 1;
        } else if !self.limit_met() {
            row::write_body(body, &mut self.pending);
            self.sent += 1;
        }
        Ok(())
    }

    /// Emits heads while every unfinished shard has one (k-way merge).
    pub(super) fn merge_heads(&mut self) -> Result<(), MergeError> {
        while !self.limit_met() {
            let mut best: Option<usize> = None;
            for i in 0..self.queues.len() {
                let Some(head) = self.queues[i].front() else {
                    if !self.complete[i] {
                        return Ok(());
                    }
                    continue;
                };
                let layout = self.layout.as_ref().expect("sorted merge has a layout");
                let better = match best {
                    None => true,
                    Some(b) => {
                        let cur = self.queues[b].front().expect("best has a head");
                        compare(&layout.sort, &head.keys, &cur.keys) == Ordering::Less
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let Some(b) = best else { return Ok(()) };
            let Head { row, .. } = self.queues[b].pop_front().expect("best has a head");
            self.emit(&row)?;
        }
        Ok(())
    }

    /// Adds a partial row to its group.
    pub(super) fn accumulate(&mut self, row: &Row) -> Result<(), MergeError> {
        let layout = self.layout.as_ref().expect("rows come after the layout");
        let a = self.spec.aggregate.as_ref().expect("aggregating");
        let gk = a
            .group_by
            .iter()
            .map(|c| {
                let i = layout.resolve(*c);
                row.get(i)
                    .map(|b| key(layout.types[i], b, true))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let g = match self.groups.index.get(&gk) {
            Some(&g) => g,
            None => {
                let accs = a
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, role)| {
                        let (sum, count) = match role {
                            Role::Agg(Agg::Avg { sum, count }) => {
                                (layout.resolve(*sum), layout.resolve(*count))
                            }
                            _ => (0, 0),
                        };
                        Acc::new(role, layout.types[i], sum, count)
                    })
                    .collect();
                self.groups.accs.push(accs);
                self.groups.index.insert(gk, self.groups.accs.len() - 1);
                self.groups.accs.len() - 1
            }
        };
        for (i, acc) in self.groups.accs[g].iter_mut().enumerate() {
            acc.add(row, i, &layout.types)?;
        }
        Ok(())
    }

    /// Finishes every group, keeps those HAVING accepts, sorts and emits.
    pub(super) fn emit_groups(&mut self) -> Result<(), MergeError> {
        let Some(layout) = self.layout.take() else {
            return Ok(());
        };
        let a = self.spec.aggregate.clone().expect("aggregating");
        let resolve = |c| layout.resolve(c);
        let mut rows = Vec::with_capacity(self.groups.accs.len());
        for accs in std::mem::take(&mut self.groups.accs) {
            let values: Vec<Option<Vec<u8>>> = accs
                .iter()
                .enumerate()
                .map(|(i, acc)| acc.finish(layout.types[i], &accs))
                .collect::<Result<_, _>>()?;
            if let Some(p) = &a.having {
                let g = having::Group {
                    values: &values,
                    types: &layout.types,
                    resolve: &resolve,
                };
                if having::eval(p, &g)? != Some(true) {
                    continue;
                }
            }
            let keys = layout
                .sort
                .iter()
                .map(|(i, _)| {
                    values[*i]
                        .as_ref()
                        .map(|b| key(layout.types[*i], b, true))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push((keys, values));
        }
        rows.sort_by(|x, y| compare(&layout.sort, &x.0, &y.0));
        for (_, values) in rows {
            if self.limit_met() {
                break;
            }
            if self.spec.distinct {
                let k = (0..layout.visible)
                    .map(|i| {
                        values[i]
                            .as_ref()
                            .map(|b| key(layout.types[i], b, true))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if !self.seen.insert(k) {
                    continue;
                }
            }
            if self.skipped < self.offset {
                self.skipped += 1;
                continue;
            }
            row::write_values(&values[..layout.visible], &mut self.pending);
            self.sent += 1;
        }
        self.layout = Some(layout);
        Ok(())
    }
}
