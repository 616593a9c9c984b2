//! The RETURNING rows of a split multi-row INSERT in VALUES order.
//!
//! PostgreSQL returns the rows of `INSERT ... VALUES ... RETURNING` in the
//! order of the VALUES rows, and ORMs (Django's bulk_create, SQLAlchemy's
//! insertmanyvalues) pair them with their objects by position. Each shard
//! returns its own rows in their VALUES order, so knowing the shard of
//! every VALUES row the shards' rows interleave back exactly — as long as
//! every row came back. When a row was not inserted (ON CONFLICT DO
//! NOTHING, a BEFORE trigger returning NULL) the positions are unknown:
//! exact only if at most one shard returned rows, else refused with 0A000
//! (and the INSERT rolled back).

use std::collections::VecDeque;

use bytes::Bytes;

use super::write::Answer;
use super::ShardError;

/// Moves every leg's DataRows into the first leg's answer, in VALUES
/// order: `shards[i]` is leg i's shard, `row_shards[r]` the shard of VALUES
/// row r. Each answer ends with the INSERT's CommandComplete (and
/// ReadyForQuery); the rows go before the first answer's last one.
pub(super) fn returning_in_values_order(
    answers: &mut [Answer],
    shards: &[usize],
    row_shards: &[usize],
) -> Result<(), ShardError> {
    let mut rows: Vec<VecDeque<Bytes>> = answers
        .iter()
        .map(|a| {
            a.iter()
                .filter(|(t, _)| *t == b'D')
                .map(|(_, b)| b.clone())
                .collect()
        })
        .collect();
    let with_rows = rows.iter().filter(|r| !r.is_empty()).count();
    if with_rows <= 1 {
        return Ok(()); // one shard's rows: already in their order
    }
    let complete = shards
        .iter()
        .zip(&rows)
        .all(|(s, r)| row_shards.iter().filter(|x| *x == s).count() == r.len());
    if !complete {
        return Err(ShardError::router(
            "0A000",
            "pgrouter: INSERT ... RETURNING on several shards where some rows were not inserted \
             (ON CONFLICT DO NOTHING or a trigger): the order of the RETURNING rows cannot be known; \
             HINT: insert the rows of each shard key separately",
        ));
    }
    let mut ordered = Vec::with_capacity(row_shards.len());
    for s in row_shards {
        let leg = shards.iter().position(|x| x == s);
        match leg.and_then(|l| rows[l].pop_front()) {
            Some(b) => ordered.push((b'D', b)),
            None => {
                return Err(ShardError::router(
                    "XX000",
                    "pgrouter: RETURNING rows do not match the VALUES rows",
                ))
            }
        }
    }
    for a in answers.iter_mut() {
        a.retain(|(t, _)| *t != b'D');
    }
    let first = &mut answers[0];
    let at = first
        .iter()
        .rposition(|(t, _)| *t == b'C')
        .unwrap_or(first.len());
    first.splice(at..at, ordered);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(rows: &[&str]) -> Answer {
        let mut a: Answer = vec![(b'T', Bytes::from_static(b"t"))];
        a.extend(
            rows.iter()
                .map(|r| (b'D', Bytes::copy_from_slice(r.as_bytes()))),
        );
        a.push((b'C', Bytes::from_static(b"INSERT 0 n")));
        a.push((b'Z', Bytes::from_static(b"I")));
        a
    }

    fn rows(a: &Answer) -> Vec<&[u8]> {
        a.iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| &b[..])
            .collect()
    }

    #[test]
    fn rows_interleave_back_into_values_order() {
        // Rows 1..6 on shards 2, 0, 1, 0, 2, 0.
        let mut answers = vec![
            answer(&["2", "4", "6"]),
            answer(&["3"]),
            answer(&["1", "5"]),
        ];
        assert!(returning_in_values_order(&mut answers, &[0, 1, 2], &[2, 0, 1, 0, 2, 0]).is_ok());
        assert_eq!(rows(&answers[0]), [b"1", b"2", b"3", b"4", b"5", b"6"]);
        assert!(rows(&answers[1]).is_empty() && rows(&answers[2]).is_empty());
        assert_eq!(answers[0].last().unwrap().0, b'Z');
        assert_eq!(answers[0][answers[0].len() - 2].0, b'C');
    }

    #[test]
    fn missing_rows_on_several_shards_are_refused() {
        let mut answers = vec![answer(&["2"]), answer(&["3"])];
        let e = returning_in_values_order(&mut answers, &[0, 1], &[0, 1, 0]);
        assert!(matches!(
            e,
            Err(ShardError::Router {
                sqlstate: "0A000",
                ..
            })
        ));
        // One shard's rows only: their order is exact.
        let mut answers = vec![answer(&["2"]), answer(&[])];
        assert!(returning_in_values_order(&mut answers, &[0, 1], &[0, 1, 0]).is_ok());
        assert_eq!(rows(&answers[0]), [b"2"]);
    }
}
