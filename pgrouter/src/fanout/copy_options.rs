//! The COPY statement's options (parsed in `pgrouter-parser` with
//! pg_query), and where its shard key sits in each row.

pub use pgrouter_parser::copy::{
    copy_options, encoding_embeds_ascii, CopyError, CopyFormat, CopyHeader, CopyInfo, ForceColumns,
};

/// The index of the shard key `column` in each row of the COPY: the
/// router knows a row's layout only from the column list, so a COPY into a
/// sharded table must name its columns, the key among them (else 0A000).
pub fn key_column(info: &CopyInfo, column: &str) -> Result<usize, CopyError> {
    let Some(columns) = &info.columns else {
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
        assert_eq!(key_column(&info, "cid"), Ok(1));
        assert_eq!(key_column(&info, "id").unwrap_err().sqlstate, "0A000");
        let all = copy_options("COPY orders FROM STDIN").unwrap();
        assert!(key_column(&all, "cid")
            .unwrap_err()
            .message
            .contains("column list"));
    }
}
