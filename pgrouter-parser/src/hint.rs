//! Routing hints in comments: `/* pgrouter: role=replica shard=3 */`.
//!
//! pg_query drops comments, so hints are read with the crate's own lexer. Only
//! comments before the first token or after the last one (a final `;` aside)
//! count: a hint is about the whole text, and a comment in the middle of a
//! statement is more likely commented-out SQL than an instruction.

use crate::analysis::{Hint, RoleHint};
use crate::lexer::{Lexer, Tok};

const MARK: &[u8] = b"pgrouter:";

/// The shard a `shard=` hint or `SET pgrouter.shard` names when its value
/// is not a shard number (negative, too large, not a number): no database
/// has it.
pub const NO_SUCH_SHARD: u32 = u32::MAX;

/// Whether a comment mentions `pgrouter:` (any case): such a comment makes
/// the text's analysis depend on the comment, see [`crate::normalize_key`].
pub(crate) fn mentions_pgrouter(comment: &str) -> bool {
    find_mark(comment).is_some()
}

fn find_mark(s: &str) -> Option<usize> {
    s.as_bytes().windows(MARK.len()).position(|w| w.eq_ignore_ascii_case(MARK))
}

/// The hint of a query text (default when there is none). Unknown keys and
/// bad roles are ignored; a `shard=` that is not a shard number names no
/// shard ([`NO_SUCH_SHARD`]), and the statement is refused with 22023 like
/// one naming a shard past the last (a statement meant for one shard must
/// not run on another). When leading and trailing comments both give a
/// key, the leading one wins.
pub(crate) fn extract(sql: &str) -> Hint {
    let mut hint = Hint::default();
    // Cheap exit for the common case.
    if find_mark(sql).is_none() {
        return hint;
    }
    let mut leading = true;
    let mut trailing: Vec<&str> = Vec::new();
    for token in Lexer::new(sql) {
        let Ok((tok, start, end)) = token else { break };
        let text = &sql[start..end];
        match tok {
            Tok::Space => {}
            Tok::Comment if leading => apply(&mut hint, text),
            Tok::Comment => trailing.push(text),
            Tok::Other if text == ";" => leading = false,
            _ => {
                leading = false;
                trailing.clear();
            }
        }
    }
    for c in trailing {
        apply(&mut hint, c);
    }
    hint
}

/// Reads `key=value` words after `pgrouter:` in one comment into `hint`,
/// keeping values already set.
fn apply(hint: &mut Hint, comment: &str) {
    let Some(at) = find_mark(comment) else { return };
    let body = comment[at + MARK.len()..].trim_end_matches("*/");
    for word in tighten_equals(body).split(|c: char| c.is_whitespace() || c == ',') {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        if key.eq_ignore_ascii_case("role") && hint.role.is_none() {
            hint.role = if value.eq_ignore_ascii_case("primary") {
                Some(RoleHint::Primary)
            } else if value.eq_ignore_ascii_case("replica") {
                Some(RoleHint::Replica)
            } else {
                None
            };
        } else if key.eq_ignore_ascii_case("shard") && hint.shard.is_none() {
            hint.shard = Some(shard_number(value));
        }
    }
}

/// `shard = 1` as `shard=1`: the blanks around each `=` removed.
fn tighten_equals(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '=' {
            out.truncate(out.trim_end().len());
            out.push('=');
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            out.push(c);
        }
    }
    out
}

/// The shard a hint or `SET pgrouter.shard` value names: [`NO_SUCH_SHARD`]
/// when it is not a shard number.
pub fn shard_number(value: &str) -> u32 {
    value.trim().parse().unwrap_or(NO_SUCH_SHARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(sql: &str) -> (Option<RoleHint>, Option<u32>) {
        let h = extract(sql);
        (h.role, h.shard)
    }

    #[test]
    fn leading_and_trailing() {
        assert_eq!(h("/* pgrouter: role=replica */ SELECT 1"), (Some(RoleHint::Replica), None));
        assert_eq!(h("SELECT 1 /* pgrouter: shard=3 */"), (None, Some(3)));
        assert_eq!(h("SELECT 1 /* pgrouter: shard=3 */;"), (None, Some(3)));
        assert_eq!(h("-- pgrouter: role=primary shard=2\nSELECT 1"), (Some(RoleHint::Primary), Some(2)));
        assert_eq!(h("/*pgrouter:role=PRIMARY,shard=1*/SELECT 1"), (Some(RoleHint::Primary), Some(1)));
        assert_eq!(
            h("/* a */ /* pgrouter: role=replica */ SELECT 1 /* pgrouter: role=primary shard=4 */"),
            (Some(RoleHint::Replica), Some(4))
        );
    }

    #[test]
    fn ignored() {
        assert_eq!(h("SELECT /* pgrouter: role=primary */ 1"), (None, None));
        assert_eq!(h("SELECT 'pgrouter: role=primary'"), (None, None));
        assert_eq!(h("/* pgrouter: role=boss */ SELECT 1"), (None, None));
    }

    #[test]
    fn a_shard_that_is_not_a_number_names_no_shard() {
        for bad in ["x", "-1", "99999999999999999999", "1.5", ""] {
            let sql = format!("/* pgrouter: shard={bad} */ SELECT 1");
            assert_eq!(h(&sql), (None, Some(NO_SUCH_SHARD)), "{sql}");
        }
    }

    #[test]
    fn spaces_around_the_equals_sign() {
        assert_eq!(h("/* pgrouter: shard = 1 */ SELECT 1"), (None, Some(1)));
        assert_eq!(h("/* pgrouter: role =replica shard= 2 */ SELECT 1"), (Some(RoleHint::Replica), Some(2)));
    }
}
