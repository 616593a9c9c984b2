//! The COPY statement's options (parsed in `pgrouter-parser` with
//! pg_query), and where its shard key sits in each row.

pub use pgrouter_parser::copy::{
    copy_options, encoding_embeds_ascii, CopyError, CopyFormat, CopyHeader, CopyInfo, ForceColumns,
};

/// The index of the shard key `column` in each row of the COPY: the
/// router knows a row's layout from the column list, or without one from
/// the table's columns in order (`learnt`, from the catalog); else, or
/// when the key is not among them, 0A000.
pub fn key_column(
    info: &CopyInfo,
    column: &str,
    learnt: Option<&[String]>,
) -> Result<usize, CopyError> {
    let Some(columns) = info.columns.as_deref().or(learnt) else {
        return Err(CopyError {
            sqlstate: "0A000",
            message: format!(
                "pgrouter: COPY into sharded table \"{}\" without a column list: the router cannot tell which \
                 field is the shard key \"{column}\"; HINT: name the columns",
                info.table
            ),
        });
    };
    columns.iter().position(|c| c == column).ok_or_else(|| CopyError {
        sqlstate: "0A000",
        message: format!(
            "pgrouter: COPY into sharded table \"{}\" must include its shard key \"{column}\"; HINT: add the shard key",
            info.table
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_be_in_the_column_list() {
        let info = copy_options("COPY orders (note, cid) FROM STDIN").unwrap();
        assert_eq!(key_column(&info, "cid", None), Ok(1));
        assert_eq!(key_column(&info, "id", None).unwrap_err().sqlstate, "0A000");
        let all = copy_options("COPY orders FROM STDIN").unwrap();
        assert!(key_column(&all, "cid", None)
            .unwrap_err()
            .message
            .contains("column list"));
        let learnt = ["id".to_string(), "note".into(), "cid".into()];
        assert_eq!(key_column(&all, "cid", Some(&learnt)), Ok(2));
        // The statement's own list wins over the catalog's.
        assert_eq!(key_column(&info, "cid", Some(&learnt)), Ok(1));
    }
}
