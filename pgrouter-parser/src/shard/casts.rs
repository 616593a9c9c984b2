//! Which casts of a shard-key value the router can follow exactly.
//!
//! A key compared with `'abc'::varchar(2)` is compared with `'ab'`, with
//! `'xyz'::char(1)` with `'x'`, with `2.7::int` with `3`, with `1e3::text`
//! with `'1000'`: the value PostgreSQL hashes is the cast's result, not the
//! literal as written. The router does not evaluate casts; it follows only
//! those that leave the written value as it is (up to the parsing that
//! placement does anyway). Any other cast makes the value unknown: a read
//! then runs on every shard (exact), a write that needs the key is refused.

use pg_query::protobuf::{self as pb, a_const::Val, node::Node as N};

use super::value::{type_name, KeyType};

/// The key type a cast converts to, when the cast keeps the value as
/// written: no type modifier (`varchar(2)`, `char(1)`, `numeric(5,1)`
/// change values), and not `bpchar` (trailing blanks are dropped when it
/// meets text) or `name` (truncated to 63 bytes).
pub(super) fn exact_target(t: &pb::TypeCast) -> Option<KeyType> {
    let ty = t.type_name.as_ref()?;
    if !ty.typmods.is_empty() {
        return None;
    }
    let name = match &ty.names.last()?.node {
        Some(N::String(s)) => s.sval.as_str(),
        _ => return None,
    };
    if matches!(name, "bpchar" | "name") {
        return None;
    }
    type_name(name)
}

/// Whether `arg` cast to `to` (an [`exact_target`]) is the value the
/// router reads from `arg`: a string, NULL or a parameter is parsed as `to`
/// either way; a number only when written as plain digits (a fraction or
/// exponent is rounded or rewritten by the cast, and `007::text` is `'7'`,
/// which the literal's own reading already gives for integers); a nested
/// cast only within one family of types (integer to integer, text to text).
pub(super) fn keeps_value(arg: &pb::Node, to: KeyType) -> bool {
    match arg.node.as_ref() {
        Some(N::ParamRef(_)) => true,
        Some(N::AConst(c)) => match c.val.as_ref() {
            None => c.isnull,
            Some(Val::Sval(_) | Val::Ival(_)) => true,
            Some(Val::Fval(f)) => plain_digits(&f.fval, to),
            Some(_) => false,
        },
        Some(N::TypeCast(inner)) => exact_target(inner).is_some_and(|from| {
            family(from) == family(to) && inner.arg.as_deref().is_some_and(|a| keeps_value(a, from))
        }),
        _ => false,
    }
}

/// A number too large for pg_query's integer constant: digits only, and for
/// a text target without leading zeros (numeric's output drops them).
fn plain_digits(text: &str, to: KeyType) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (to.is_integer() || !digits.starts_with('0') || digits == "0")
}

/// Casts within a family keep a value (or fail as PostgreSQL fails).
fn family(ty: KeyType) -> u8 {
    match ty {
        KeyType::Smallint | KeyType::Integer | KeyType::Bigint => 0,
        KeyType::Text | KeyType::Varchar => 1,
        KeyType::Uuid => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cast_of(sql: &str) -> pb::TypeCast {
        let parsed = pg_query::parse(&format!("SELECT {sql}"), 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap();
        let N::SelectStmt(s) = stmt else { panic!() };
        let Some(N::ResTarget(rt)) = &s.target_list[0].node else { panic!() };
        let Some(N::TypeCast(t)) = rt.val.as_ref().unwrap().node.as_ref() else { panic!("{sql}") };
        (**t).clone()
    }

    fn exact(sql: &str) -> bool {
        let t = cast_of(sql);
        exact_target(&t).is_some_and(|to| keeps_value(t.arg.as_deref().unwrap(), to))
    }

    #[test]
    fn value_keeping_casts() {
        for sql in [
            "'abc'::text",
            "'abc'::varchar",
            "'5'::bigint",
            "5::int",
            "$1::text",
            "CAST('a' AS character varying)",
            "'1'::int2::int8",
            "'a'::text::varchar",
            "99999999999::bigint",
            "99999999999::text",
            "NULL::text",
            "'{1,2}'::int[]",
        ] {
            assert!(exact(sql), "{sql}");
        }
    }

    #[test]
    fn value_changing_casts() {
        for sql in [
            "'abc'::varchar(2)",
            "'xyz'::char(1)",
            "'xyz'::char",
            "'a  '::bpchar",
            "'a'::name",
            "$1::varchar(3)",
            "2.7::int",
            "1e3::text",
            "1.50::text",
            "00099999999999::text",
            "'03'::int::text",
            "'a'::numeric",
            "'{abc}'::varchar(2)[]",
            "'x'::\"char\"",
        ] {
            assert!(!exact(sql), "{sql}");
        }
    }
}
