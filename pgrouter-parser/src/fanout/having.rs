//! HAVING as a [`Predicate`] the merger evaluates on merged groups:
//! comparisons of aggregates and grouping expressions with constants or
//! parameters, BETWEEN, IN, IS [NOT] NULL, AND/OR/NOT. Its aggregates
//! become hidden columns unless the select list already has them.

use pg_query::protobuf::{self as pb, a_const::Val, node::Node as N};
use pg_query::protobuf::{AExprKind, BoolExprType, NullTestType};

use super::plan::Planner;
use super::spec::{CmpOp, Operand, Predicate};
use super::Unsupported;

fn refuse(what: &str) -> Unsupported {
    Unsupported::new(
        &format!("HAVING with {what}"),
        "compare aggregates or GROUP BY columns with constants, combined with AND/OR/NOT",
    )
}

impl Planner {
    pub(super) fn predicate(&mut self, node: &pb::Node) -> Result<Predicate, Unsupported> {
        match node.node.as_ref() {
            Some(N::BoolExpr(b)) => {
                let args = b.args.iter().map(|a| self.predicate(a)).collect::<Result<Vec<_>, _>>()?;
                match BoolExprType::try_from(b.boolop) {
                    Ok(BoolExprType::AndExpr) => Ok(Predicate::And(args)),
                    Ok(BoolExprType::OrExpr) => Ok(Predicate::Or(args)),
                    Ok(BoolExprType::NotExpr) if args.len() == 1 => {
                        Ok(Predicate::Not(Box::new(args.into_iter().next().expect("one argument"))))
                    }
                    _ => Err(refuse("an unknown boolean operator")),
                }
            }
            Some(N::NullTest(t)) => {
                let operand = self.operand(t.arg.as_deref().ok_or_else(|| refuse("an empty IS NULL"))?)?;
                Ok(Predicate::IsNull { operand, negated: t.nulltesttype == NullTestType::IsNotNull as i32 })
            }
            Some(N::AExpr(e)) => self.a_expr(e),
            _ => Ok(Predicate::Truth(self.operand(node)?)),
        }
    }

    fn a_expr(&mut self, e: &pb::AExpr) -> Result<Predicate, Unsupported> {
        let op = match e.name.last().and_then(|n| n.node.as_ref()) {
            Some(N::String(s)) => s.sval.as_str(),
            _ => "",
        };
        let left = e.lexpr.as_deref().ok_or_else(|| refuse("a prefix operator"))?;
        let right = e.rexpr.as_deref().ok_or_else(|| refuse("a postfix operator"))?;
        let list = |r: &pb::Node| match &r.node {
            Some(N::List(l)) => Some(l.items.clone()),
            _ => None,
        };
        match AExprKind::try_from(e.kind) {
            Ok(AExprKind::AexprOp) => {
                let op = cmp(op).ok_or_else(|| refuse(&format!("the operator {op}")))?;
                self.compare(left, op, right)
            }
            Ok(AExprKind::AexprIn) => {
                let items = list(right).ok_or_else(|| refuse("IN of a non-list"))?;
                let eq = op == "=";
                let terms = items
                    .iter()
                    .map(|i| self.compare(left, if eq { CmpOp::Eq } else { CmpOp::Ne }, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if eq { Predicate::Or(terms) } else { Predicate::And(terms) })
            }
            Ok(kind @ (AExprKind::AexprBetween | AExprKind::AexprNotBetween)) => {
                let bounds = list(right).filter(|b| b.len() == 2).ok_or_else(|| refuse("a malformed BETWEEN"))?;
                let both = Predicate::And(vec![
                    self.compare(left, CmpOp::Ge, &bounds[0])?,
                    self.compare(left, CmpOp::Le, &bounds[1])?,
                ]);
                Ok(if kind == AExprKind::AexprBetween { both } else { Predicate::Not(Box::new(both)) })
            }
            _ => Err(refuse(&format!("the operator {op}"))),
        }
    }

    fn compare(&mut self, left: &pb::Node, op: CmpOp, right: &pb::Node) -> Result<Predicate, Unsupported> {
        let left = self.operand(left)?;
        let right = self.operand(right)?;
        match (&left, &right) {
            (Operand::Column(_), _) => Ok(Predicate::Compare { left, op, right }),
            (_, Operand::Column(_)) => Ok(Predicate::Compare { left: right, op: op.swapped(), right: left }),
            _ => Err(refuse("a comparison of two constants")),
        }
    }

    fn operand(&mut self, node: &pb::Node) -> Result<Operand, Unsupported> {
        if let Some(c) = constant(node) {
            return Ok(c);
        }
        Ok(Operand::Column(self.value_col(node)?.0))
    }
}

/// A constant, a parameter or NULL, possibly cast (`'2024-01-01'::date`,
/// `$1::int8`): the type comes from the other side of the comparison.
fn constant(node: &pb::Node) -> Option<Operand> {
    match node.node.as_ref()? {
        N::AConst(c) if c.isnull => Some(Operand::Null),
        N::AConst(c) => Some(Operand::Const(match c.val.as_ref()? {
            Val::Ival(i) => i.ival.to_string(),
            Val::Fval(f) => f.fval.clone(),
            Val::Boolval(b) => b.boolval.to_string(),
            Val::Sval(s) => s.sval.clone(),
            Val::Bsval(_) => return None,
        })),
        N::ParamRef(p) => Some(Operand::Param(usize::try_from(p.number).ok()?)),
        N::TypeCast(c) => match constant(c.arg.as_deref()?)? {
            Operand::Param(n) => Some(Operand::CastParam(n)),
            other => Some(other),
        },
        N::AExpr(e) if e.lexpr.is_none() => {
            let minus = matches!(e.name.last().and_then(|n| n.node.as_ref()), Some(N::String(s)) if s.sval == "-");
            match constant(e.rexpr.as_deref()?)? {
                Operand::Const(text) if minus && !text.starts_with('-') => Some(Operand::Const(format!("-{text}"))),
                _ => None,
            }
        }
        _ => None,
    }
}

fn cmp(op: &str) -> Option<CmpOp> {
    Some(match op {
        "=" => CmpOp::Eq,
        "<>" | "!=" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return None,
    })
}
