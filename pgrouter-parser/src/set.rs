//! SET / RESET statements: what the router must remember to replay session
//! state on another server connection, and which of them a JWT session may
//! not run.

use crate::analysis::{Escalation, ResetTarget, SetKind, SetStatement, StatementKind};
use crate::functions::is_guarded_setting;
use pg_query::protobuf::{a_const::Val, node::Node as N, KeywordKind, VariableSetKind, VariableSetStmt};
use pg_query::Node;

/// Settings whose list elements PostgreSQL quotes as identifiers when it
/// stores them (GUC_LIST_QUOTE).
const LIST_QUOTE: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
];

/// The statement kind of a `VariableSetStmt` and the escalation flags it sets.
pub(crate) fn classify(v: &VariableSetStmt, esc: &mut Escalation) -> StatementKind {
    let name = v.name.to_ascii_lowercase();
    let kind = VariableSetKind::try_from(v.kind).unwrap_or(VariableSetKind::Undefined);
    let stmt = match kind {
        VariableSetKind::VarResetAll => return StatementKind::Reset(ResetTarget::All),
        VariableSetKind::VarReset => {
            flag(&name, esc);
            return StatementKind::Reset(ResetTarget::Name(name));
        }
        VariableSetKind::VarSetMulti => {
            let (kind, value) = match name.as_str() {
                "session characteristics" => (SetKind::SessionCharacteristics, Some(transaction_modes(&v.args, esc))),
                "transaction snapshot" => (SetKind::TransactionCharacteristics, Some(values(&name, &v.args))),
                _ => (SetKind::TransactionCharacteristics, Some(transaction_modes(&v.args, esc))),
            };
            SetStatement { name, value, local: v.is_local, kind }
        }
        VariableSetKind::VarSetValue
        | VariableSetKind::VarSetDefault
        | VariableSetKind::VarSetCurrent
        | VariableSetKind::Undefined => {
            let value = (kind == VariableSetKind::VarSetValue).then(|| values(&name, &v.args));
            let kind = match (name.as_str(), kind) {
                ("role", _) => SetKind::Role,
                ("session_authorization", _) => SetKind::SessionAuthorization,
                // Only `SET TIME ZONE` sets jumble_args for "timezone"; `SET timezone = ...` does not.
                ("timezone", VariableSetKind::VarSetValue | VariableSetKind::VarSetDefault) if v.jumble_args => {
                    SetKind::TimeZone
                }
                (_, VariableSetKind::VarSetDefault) => SetKind::Default,
                (_, VariableSetKind::VarSetCurrent) => SetKind::FromCurrent,
                _ => SetKind::Value,
            };
            flag(&name, esc);
            SetStatement { name, value, local: v.is_local, kind }
        }
    };
    StatementKind::Set(stmt)
}

/// Flags a SET/RESET of a guarded setting.
fn flag(name: &str, esc: &mut Escalation) {
    match name {
        "role" => esc.set_role = true,
        "session_authorization" => esc.session_authorization = true,
        _ if is_guarded_setting(name) => esc.read_only_change = true,
        _ => {}
    }
}

/// Flags a guarded setting found inside another statement (a function's
/// `SET` clause, `ALTER ROLE ... SET`): it takes effect later, but it is
/// the same change.
pub(crate) fn flag_nested(name: &str, esc: &mut Escalation) {
    flag(&name.to_ascii_lowercase(), esc);
}

/// The value as PostgreSQL's flatten_set_variable_args would store it.
fn values(name: &str, args: &[Node]) -> String {
    let quote = LIST_QUOTE.contains(&name);
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match &arg.node {
            Some(N::AConst(c)) => match &c.val {
                Some(Val::Sval(s)) if quote => out.push_str(&quote_identifier(&s.sval)),
                Some(Val::Sval(s)) => out.push_str(&s.sval),
                Some(Val::Ival(n)) => out.push_str(&n.ival.to_string()),
                Some(Val::Fval(f)) => out.push_str(&f.fval),
                Some(Val::Boolval(b)) => out.push_str(if b.boolval { "on" } else { "off" }),
                Some(Val::Bsval(s)) => out.push_str(&s.bsval),
                None => {}
            },
            // `SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE`: the interval text.
            Some(N::TypeCast(t)) => {
                if let Some(Some(N::AConst(c))) = t.arg.as_ref().map(|a| &a.node) {
                    if let Some(Val::Sval(s)) = &c.val {
                        out.push_str(&s.sval);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE` from the DefElem
/// list of SET TRANSACTION / SESSION CHARACTERISTICS; READ WRITE is a
/// read-only change.
fn transaction_modes(args: &[Node], esc: &mut Escalation) -> String {
    let mut parts = Vec::new();
    for arg in args {
        let Some(N::DefElem(d)) = &arg.node else {
            continue;
        };
        let value = d.arg.as_ref().and_then(|a| a.node.as_ref());
        let int = match value {
            Some(N::AConst(c)) => match &c.val {
                Some(Val::Ival(i)) => Some(i.ival),
                _ => None,
            },
            _ => None,
        };
        let text = match value {
            Some(N::AConst(c)) => match &c.val {
                Some(Val::Sval(s)) => s.sval.to_ascii_uppercase(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        match d.defname.as_str() {
            "transaction_isolation" => parts.push(format!("ISOLATION LEVEL {text}")),
            "transaction_read_only" => {
                if int == Some(0) {
                    esc.read_only_change = true;
                    parts.push("READ WRITE".to_string());
                } else {
                    parts.push("READ ONLY".to_string());
                }
            }
            "transaction_deferrable" => {
                parts.push(if int == Some(0) { "NOT DEFERRABLE" } else { "DEFERRABLE" }.to_string())
            }
            _ => {}
        }
    }
    parts.join(", ")
}

/// PostgreSQL's quote_identifier: leave a name bare only when it is all
/// lower-case letters, digits and underscores, starts with a letter or
/// underscore, and is not a keyword (unreserved keywords may stay bare).
fn quote_identifier(s: &str) -> String {
    let simple = s.bytes().next().is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    if simple && !is_reserved_keyword(s) {
        return s.to_string();
    }
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Whether PostgreSQL's scanner sees a keyword that quote_identifier quotes.
fn is_reserved_keyword(s: &str) -> bool {
    match pg_query::scan(s) {
        Ok(r) => r.tokens.first().is_some_and(|t| {
            t.keyword_kind != KeywordKind::NoKeyword as i32 && t.keyword_kind != KeywordKind::UnreservedKeyword as i32
        }),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_identifier("public"), "public");
        assert_eq!(quote_identifier("B c"), "\"B c\"");
        assert_eq!(quote_identifier("$user"), "\"$user\"");
        assert_eq!(quote_identifier("Abc"), "\"Abc\"");
        assert_eq!(quote_identifier("select"), "\"select\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        // `name` is an unreserved keyword, so it stays bare like PostgreSQL leaves it.
        assert_eq!(quote_identifier("name"), "name");
    }
}
