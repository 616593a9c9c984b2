//! Which result columns of a merged read depend on a collation, so that
//! the executor can ask a shard for their collations before merging.
//!
//! The merge compares text by its bytes; that is PostgreSQL's answer only
//! when the column's collation orders by bytes (ORDER BY, min/max, HAVING
//! `<`), or at least is deterministic (GROUP BY, DISTINCT: equal means
//! byte-equal). A column's collation is not in the RowDescription and
//! comes from the column's declaration, a `COLLATE` clause or the
//! database default, so only the server can tell.

use super::spec::{Agg, Col, MergeSpec, Operand, Predicate, Role};

/// What the merge needs of one column's collation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CollationUse {
    /// Values are compared by order.
    Order,
    /// Values are only compared for equality.
    Equality,
}

impl MergeSpec {
    /// The columns whose collation the merge depends on (text columns
    /// among them; the executor does not know the types yet), each once,
    /// with the strongest use. Columns written with `COLLATE "C"` are left
    /// out. DISTINCT after a `*` lists only the columns before it.
    pub fn collation_columns(&self) -> Vec<(Col, CollationUse)> {
        let mut out: Vec<(Col, CollationUse)> = Vec::new();
        let mut add = |c: Col, u: CollationUse| {
            if matches!(c, Col::Visible(usize::MAX)) {
                return; // an out-of-range position: the shards report it
            }
            match out.iter_mut().find(|(o, _)| *o == c) {
                Some(e) if u == CollationUse::Order => e.1 = u,
                Some(_) => {}
                None => out.push((c, u)),
            }
        };
        for k in &self.order_by {
            if !k.collate_c {
                add(k.column, CollationUse::Order);
            }
        }
        if let Some(a) = &self.aggregate {
            for (i, role) in a.columns.iter().enumerate() {
                let col = match self.visible {
                    Some(v) if i >= v => Col::Hidden(i - v),
                    _ => Col::Visible(i),
                };
                if let Role::Agg(Agg::Min { collate_c: false } | Agg::Max { collate_c: false }) = role {
                    add(col, CollationUse::Order);
                }
            }
            for c in &a.group_by {
                add(*c, CollationUse::Equality);
            }
            if let Some(p) = &a.having {
                having_columns(p, &mut add);
            }
        }
        if self.distinct {
            if let Some(v) = self.visible {
                (0..v).for_each(|i| add(Col::Visible(i), CollationUse::Equality));
            }
        }
        out
    }
}

fn having_columns(p: &Predicate, add: &mut dyn FnMut(Col, CollationUse)) {
    match p {
        Predicate::And(v) | Predicate::Or(v) => v.iter().for_each(|p| having_columns(p, add)),
        Predicate::Not(p) => having_columns(p, add),
        Predicate::Compare { left, right, .. } => {
            for o in [left, right] {
                if let Operand::Column(c) = o {
                    add(*c, CollationUse::Order);
                }
            }
        }
        Predicate::IsNull { .. } | Predicate::Truth(_) => {}
    }
}
