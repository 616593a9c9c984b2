use super::*;

#[test]
fn placeholder() {
    for sql in [
        "SELECT a FROM t ORDER BY b",
        "SELECT a, avg(x) FROM t GROUP BY a HAVING count(*) > 5 AND sum(y) <= $1 ORDER BY 2 DESC LIMIT $2 OFFSET 3",
        "SELECT * FROM t ORDER BY id LIMIT 10 OFFSET 5",
        "SELECT id FROM t FETCH FIRST 3 ROWS ONLY",
        "SELECT id FROM t LIMIT ALL",
        "SELECT name COLLATE \"C\" AS n FROM t ORDER BY n",
    ] {
        println!("{sql}\n  {:?}", plan_read(sql));
    }
}
