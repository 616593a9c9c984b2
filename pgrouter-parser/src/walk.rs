//! A walk over every node of a statement's tree.
//!
//! The rules "a write function anywhere", "a data-modifying CTE anywhere",
//! "set_config anywhere — subqueries, CTEs, function arguments" need a walk
//! that misses no field of any of pg_query's ~270 node types, including ones
//! added by the next PostgreSQL release. pg_query's own `nodes()` iterator
//! only descends into the fields it knows about (it misses, for example,
//! `ARRAY[nextval('s')]`). Every protobuf type derives `serde::Serialize`, so
//! a serializer that throws the data away *is* a complete, generated walk:
//! it sees each struct's name and fields, and picks out the few it needs.
//!
//! Depth is bounded: prost refuses to decode a tree deeper than 100 messages,
//! so the recursion here stays far inside a 2 MiB thread stack.

use crate::functions;
use serde::ser::{self, Serialize};
use std::fmt;

/// What the walk found in one statement.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// `[catalog.][schema.]table` of every RangeVar, in order (duplicates kept).
    pub tables: Vec<String>,
    /// Names of CTEs defined in the statement (references to them are not tables).
    pub ctes: Vec<String>,
    /// An INSERT/UPDATE/DELETE/MERGE node (e.g. in a CTE of a SELECT).
    pub dml: bool,
    /// A FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE clause.
    pub locking: bool,
    /// An INTO clause (`SELECT ... INTO t` creates a table).
    pub into: bool,
    /// A call of a write function.
    pub write_function: bool,
    /// Some call of `set_config` (or an UPDATE of `pg_settings`, which
    /// PostgreSQL turns into one).
    pub set_config: bool,
    /// A call of a built-in that runs SQL given as text (`query_to_xml`).
    pub runs_sql_text: bool,
    /// A call of a function that is not one of PostgreSQL's own.
    pub unknown_function: bool,
    /// The first call (function name, or the SQL keyword of a value function
    /// such as `CURRENT_TIMESTAMP`) whose value may differ between servers
    /// (see [`functions::varies_by_server`]).
    pub varies_by_server: Option<String>,
    /// How many `set_config` calls the statement has, wherever they are.
    pub set_config_calls: usize,
    /// A `set_config` call whose first argument is a guarded setting or not a literal.
    pub set_config_sensitive: bool,
    /// Setting names of VariableSetStmt nodes (function `SET` clauses, `ALTER ... SET`).
    pub settings: Vec<String>,
    /// Session state created or ended by the function calls in it.
    pub session_state: crate::session_state::SessionStateChange,
}

impl Facts {
    /// The statement reads no more than a SELECT may on a replica.
    pub(crate) fn writes(&self) -> bool {
        self.dml || self.locking || self.into || self.write_function
    }
}

/// The SQL keyword of a SQLValueFunction whose value may differ between
/// servers, by pg_query's `SqlValueFunctionOp` number: the date/time ones
/// (each server's transaction has its own start) and `CURRENT_CATALOG`
/// (each shard's database may have its own name). The user and schema
/// ones are the same on every shard's connection.
fn varying_value_function(op: i64) -> Option<&'static str> {
    use pg_query::protobuf::SqlValueFunctionOp as Op;
    let op = Op::try_from(i32::try_from(op).ok()?).ok()?;
    Some(match op {
        Op::SvfopCurrentDate => "CURRENT_DATE",
        Op::SvfopCurrentTime | Op::SvfopCurrentTimeN => "CURRENT_TIME",
        Op::SvfopCurrentTimestamp | Op::SvfopCurrentTimestampN => "CURRENT_TIMESTAMP",
        Op::SvfopLocaltime | Op::SvfopLocaltimeN => "LOCALTIME",
        Op::SvfopLocaltimestamp | Op::SvfopLocaltimestampN => "LOCALTIMESTAMP",
        Op::SvfopCurrentCatalog => "CURRENT_CATALOG",
        _ => return None,
    })
}

/// Walks `node` (any pg_query protobuf value).
pub(crate) fn walk<T: Serialize + ?Sized>(node: &T, write_functions: &[String]) -> Facts {
    let mut st = State {
        write_functions,
        facts: Facts::default(),
        strings: Vec::new(),
        arg: Arg::Missing,
        update_target: false,
        int: 0,
    };
    // The serializer never fails; a failure could only cut the walk short.
    let _ = node.serialize(V { st: &mut st, mode: Mode::Walk });
    st.facts
}

struct State<'w> {
    write_functions: &'w [String],
    facts: Facts,
    /// Scratch for [`Mode::Strings`].
    strings: Vec<String>,
    /// Result of [`Mode::Arg`].
    arg: Arg,
    /// Visiting the target relation of an UPDATE.
    update_target: bool,
    /// Result of [`Mode::Int`].
    int: i64,
}

/// The first argument of a function call, as far as `set_config` cares.
#[derive(Debug, Default)]
enum Arg {
    #[default]
    Missing,
    /// A string constant (possibly cast): its value.
    Literal(String),
    /// A number, boolean or NULL constant.
    OtherLiteral,
    /// An expression: its value is unknown here.
    NotLiteral,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Visit everything, picking out facts.
    Walk,
    /// Collect every string into `State::strings` (qualified names, plain string fields).
    Strings,
    /// Inspect the first element of an argument list, at the given point of
    /// the shape `[Node{node: AConst{val: Sval(String{sval})}} | TypeCast{arg: ...}, ...]`.
    Arg(At),
    /// Read an integer field (an enum's number) into `State::int`.
    Int,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    List,
    Node,
    NodeVariant,
    Const,
    ConstVal,
    IsNull,
    Str,
    StrVal,
    Cast,
}

/// Per-struct state while its fields are visited.
enum Frame {
    Plain,
    Func {
        name: Vec<String>,
        arg: Arg,
    },
    RangeVar {
        parts: [String; 3],
    },
    Cte,
    VarSet,
    Update,
    /// `CURRENT_TIMESTAMP`, `CURRENT_USER`, ... (pg_query's SQLValueFunction).
    SqlValue,
}

/// The serializer: a mutable borrow of the walk's state and what to do here.
struct V<'a, 'w> {
    st: &'a mut State<'w>,
    mode: Mode,
}

/// A compound value (struct, sequence, ...) being visited.
struct C<'a, 'w> {
    st: &'a mut State<'w>,
    mode: Mode,
    frame: Frame,
    index: usize,
}

/// The walk's error type; never produced.
#[derive(Debug)]
struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("walk stopped")
    }
}
impl std::error::Error for Never {}
impl ser::Error for Never {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Never
    }
}

type R = Result<(), Never>;

impl<'w> State<'w> {
    fn strings_of<T: Serialize + ?Sized>(&mut self, value: &T) -> Vec<String> {
        self.strings.clear();
        let _ = value.serialize(V { st: self, mode: Mode::Strings });
        std::mem::take(&mut self.strings)
    }

    fn first_arg<T: Serialize + ?Sized>(&mut self, value: &T) -> Arg {
        self.arg = Arg::Missing;
        let _ = value.serialize(V { st: self, mode: Mode::Arg(At::List) });
        std::mem::take(&mut self.arg)
    }

    fn finish(&mut self, frame: Frame) {
        match frame {
            Frame::Func { name, arg } => {
                if functions::is_set_config(&name) {
                    self.facts.set_config = true;
                    self.facts.set_config_calls += 1;
                    let sensitive = match &arg {
                        Arg::Literal(s) => functions::is_guarded_setting(s),
                        Arg::OtherLiteral => false,
                        Arg::Missing | Arg::NotLiteral => true,
                    };
                    self.facts.set_config_sensitive |= sensitive;
                }
                if functions::is_write_function(&name, self.write_functions) {
                    self.facts.write_function = true;
                }
                self.facts.runs_sql_text |= functions::runs_sql_text(&name);
                self.facts.unknown_function |= !functions::is_builtin_function(&name);
                if self.facts.varies_by_server.is_none() && functions::varies_by_server(&name) {
                    self.facts.varies_by_server = Some(name.join("."));
                }
                self.facts.session_state.merge(crate::session_state::of_function(&name));
            }
            Frame::RangeVar { parts } => {
                let name = parts.iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(".");
                // pg_settings has a rule that turns an UPDATE into set_config().
                if self.update_target && parts[2] == "pg_settings" && matches!(parts[1].as_str(), "" | "pg_catalog") {
                    self.facts.set_config = true;
                    self.facts.set_config_sensitive = true;
                }
                if !name.is_empty() {
                    self.facts.tables.push(name);
                }
            }
            Frame::Plain | Frame::Cte | Frame::VarSet | Frame::Update | Frame::SqlValue => {}
        }
    }
}

impl<'a, 'w> C<'a, 'w> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> R {
        match self.mode {
            Mode::Walk => {}
            Mode::Int => return Ok(()),
            Mode::Strings => return value.serialize(V { st: self.st, mode: Mode::Strings }),
            Mode::Arg(at) => {
                let next = match (at, key) {
                    (At::Node, "node") => At::NodeVariant,
                    (At::Const, "val") => At::ConstVal,
                    (At::Const, "isnull") => At::IsNull,
                    (At::Str, "sval") => At::StrVal,
                    (At::Cast, "arg") => At::Node,
                    _ => return Ok(()),
                };
                return value.serialize(V { st: self.st, mode: Mode::Arg(next) });
            }
        }
        match &mut self.frame {
            Frame::Func { name, arg } => match key {
                "funcname" => {
                    *name = self.st.strings_of(value);
                    return Ok(());
                }
                "args" => *arg = self.st.first_arg(value),
                _ => {}
            },
            Frame::RangeVar { parts } => {
                let slot = match key {
                    "catalogname" => Some(0),
                    "schemaname" => Some(1),
                    "relname" => Some(2),
                    _ => None,
                };
                if let Some(i) = slot {
                    parts[i] = self.st.strings_of(value).pop().unwrap_or_default();
                    return Ok(());
                }
            }
            Frame::Cte if key == "ctename" => {
                let name = self.st.strings_of(value).pop().unwrap_or_default();
                self.st.facts.ctes.push(name);
                return Ok(());
            }
            Frame::Update if key == "relation" => {
                self.st.update_target = true;
                let _ = value.serialize(V { st: self.st, mode: Mode::Walk });
                self.st.update_target = false;
                return Ok(());
            }
            Frame::SqlValue if key == "op" => {
                self.st.int = -1;
                let _ = value.serialize(V { st: self.st, mode: Mode::Int });
                if let Some(keyword) = varying_value_function(self.st.int) {
                    self.st.facts.varies_by_server.get_or_insert_with(|| keyword.to_string());
                }
                return Ok(());
            }
            Frame::VarSet if key == "name" => {
                let name = self.st.strings_of(value).pop().unwrap_or_default();
                self.st.facts.settings.push(name);
                return Ok(());
            }
            _ => {}
        }
        value.serialize(V { st: self.st, mode: Mode::Walk })
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        let i = self.index;
        self.index += 1;
        match self.mode {
            Mode::Arg(At::List) if i == 0 => {
                self.st.arg = Arg::NotLiteral;
                value.serialize(V { st: self.st, mode: Mode::Arg(At::Node) })
            }
            Mode::Arg(_) => Ok(()),
            mode => value.serialize(V { st: self.st, mode }),
        }
    }

    fn end(self) -> R {
        self.st.finish(self.frame);
        Ok(())
    }
}

impl<'a, 'w> ser::Serializer for V<'a, 'w> {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = C<'a, 'w>;
    type SerializeTuple = C<'a, 'w>;
    type SerializeTupleStruct = C<'a, 'w>;
    type SerializeTupleVariant = C<'a, 'w>;
    type SerializeMap = C<'a, 'w>;
    type SerializeStruct = C<'a, 'w>;
    type SerializeStructVariant = C<'a, 'w>;

    fn serialize_bool(self, v: bool) -> R {
        if v && self.mode == Mode::Arg(At::IsNull) {
            self.st.arg = Arg::OtherLiteral;
        }
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> R {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> R {
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> R {
        if self.mode == Mode::Int {
            self.st.int = i64::from(v);
        }
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> R {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> R {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> R {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> R {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> R {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> R {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> R {
        Ok(())
    }
    fn serialize_char(self, _: char) -> R {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> R {
        match self.mode {
            Mode::Strings => self.st.strings.push(v.to_owned()),
            Mode::Arg(At::StrVal) => self.st.arg = Arg::Literal(v.to_owned()),
            _ => {}
        }
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Ok(())
    }
    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> R {
        let next = match self.mode {
            Mode::Arg(At::NodeVariant) => match variant {
                "AConst" => At::Const,
                "TypeCast" => At::Cast,
                _ => return Ok(()), // stays NotLiteral
            },
            Mode::Arg(At::ConstVal) => match variant {
                "Sval" => At::Str,
                _ => {
                    self.st.arg = Arg::OtherLiteral;
                    return Ok(());
                }
            },
            Mode::Arg(_) => return Ok(()),
            _ => return value.serialize(self),
        };
        value.serialize(V { st: self.st, mode: Mode::Arg(next) })
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<C<'a, 'w>, Never> {
        Ok(C { st: self.st, mode: self.mode, frame: Frame::Plain, index: 0 })
    }
    fn serialize_tuple(self, _: usize) -> Result<C<'a, 'w>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<C<'a, 'w>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<C<'a, 'w>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<C<'a, 'w>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<C<'a, 'w>, Never> {
        let frame = if self.mode != Mode::Walk {
            Frame::Plain
        } else {
            let facts = &mut self.st.facts;
            match name {
                "FuncCall" => Frame::Func { name: Vec::new(), arg: Arg::Missing },
                "RangeVar" => Frame::RangeVar { parts: Default::default() },
                "CommonTableExpr" => Frame::Cte,
                "SqlValueFunction" => Frame::SqlValue,
                "VariableSetStmt" => Frame::VarSet,
                "UpdateStmt" => {
                    facts.dml = true;
                    Frame::Update
                }
                "InsertStmt" | "DeleteStmt" | "MergeStmt" => {
                    facts.dml = true;
                    Frame::Plain
                }
                "LockingClause" => {
                    facts.locking = true;
                    Frame::Plain
                }
                "IntoClause" => {
                    facts.into = true;
                    Frame::Plain
                }
                _ => Frame::Plain,
            }
        };
        Ok(C { st: self.st, mode: self.mode, frame, index: 0 })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<C<'a, 'w>, Never> {
        self.serialize_struct(name, len)
    }
}

impl ser::SerializeSeq for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.element(value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeTuple for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.element(value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeTupleStruct for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.element(value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeTupleVariant for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.element(value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeMap for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R {
        self.element(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
        self.element(value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeStruct for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> R {
        self.field(key, value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

impl ser::SerializeStructVariant for C<'_, '_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> R {
        self.field(key, value)
    }
    fn end(self) -> R {
        C::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sql: &str) -> Facts {
        let parsed = pg_query::parse(sql, 0).unwrap();
        walk(&parsed.protobuf.stmts[0], &["my_fn".to_string()])
    }

    #[test]
    fn finds_calls_everywhere() {
        assert!(facts("SELECT ARRAY[nextval('s')]").write_function);
        assert!(facts("SELECT CASE WHEN x THEN coalesce(a, my_fn(1)) END FROM t").write_function);
        assert!(facts("SELECT count(*) FILTER (WHERE pg_try_advisory_lock(1)) FROM t").write_function);
        assert!(facts("SELECT * FROM t WHERE a IN (SELECT lo_create(0))").write_function);
        assert!(!facts("SELECT lower(a) FROM t").write_function);
    }

    #[test]
    fn set_config_first_argument() {
        let f = facts("SELECT * FROM (SELECT set_config('role','admin',false)) s");
        assert!(f.set_config && f.set_config_sensitive);
        let f = facts("SELECT set_config('search_path', 'x', false)");
        assert!(f.set_config && !f.set_config_sensitive);
        assert!(facts("SELECT pg_catalog.set_config('ROLE'::text, 'x', false)").set_config_sensitive);
        assert!(facts("SELECT set_config(name, 'x', false) FROM t").set_config_sensitive);
        assert!(facts("SELECT set_config('search' || '_path', 'x', false)").set_config_sensitive);
        // A nested call's first argument does not leak into the outer one.
        let f = facts("SELECT lower(set_config('search_path', 'x', false))");
        assert!(f.set_config && !f.set_config_sensitive);
    }

    #[test]
    fn tables_and_ctes() {
        let f = facts("WITH x AS (DELETE FROM s.t RETURNING *) SELECT * FROM x JOIN \"U\" u ON true, c.s.v");
        assert!(f.dml);
        // Tree order: a SelectStmt lists its FROM clause before its WITH clause.
        assert_eq!(f.tables, vec!["x", "U", "c.s.v", "s.t"]);
        assert_eq!(f.ctes, vec!["x"]);
    }

    #[test]
    fn locking_and_into() {
        assert!(facts("SELECT * FROM (SELECT * FROM t FOR KEY SHARE) s").locking);
        assert!(facts("SELECT 1 INTO t").into);
        assert!(!facts("SELECT 1").writes());
    }
}
