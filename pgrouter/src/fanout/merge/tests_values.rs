//! Value encodings against what PostgreSQL 15 itself produced
//! (`numeric_send`, `float8send`, float output with extra_float_digits = 1).

use super::datetime;
use super::floatfmt;
use super::numeric::Numeric;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (text, numeric_send) pairs from PG 15.
const NUMERIC_SEND: &[(&str, &str)] = &[
    ("12345.678", "0003000100000003000109291a7c"),
    ("-0.0001200", "0002ffff40000007000107d0"),
    ("0", "0000000000000000"),
    ("100000000.00", "00010002000000020001"),
    ("NaN", "00000000c0000000"),
    ("Infinity", "00000000d0000020"),
    ("-Infinity", "00000000f0000020"),
    ("0.00", "0000000000000002"),
    ("9999.9999", "0002000000000004270f270f"),
    ("10000", "00010001000000000001"),
    (
        "-123456789.987654321",
        "0006000240000009000109291a852694153803e8",
    ),
];

#[test]
fn numeric_binary_and_text_round_trip_like_postgres() {
    for (text, send) in NUMERIC_SEND {
        let n = Numeric::parse_text(text).unwrap();
        assert_eq!(n.to_binary(), hex(send), "{text}");
        assert_eq!(n.to_text(), *text);
        let back = Numeric::parse_binary(&hex(send)).unwrap();
        assert_eq!(back.to_text(), *text, "{send}");
    }
}

#[test]
fn numeric_malformed_input_is_refused_not_a_panic() {
    for bad in ["", "-", ".", "1.2.3", "1e5", "abc", "--1"] {
        assert!(Numeric::parse_text(bad).is_none(), "{bad}");
    }
    for bad in [
        "",
        "0001",
        "000100000000000027",
        "0001000000000000ffff",
        "00000000e0000000",
    ] {
        assert!(Numeric::parse_binary(&hex(bad)).is_none(), "{bad}");
    }
}

#[test]
fn numeric_addition_is_exact() {
    let add = |a: &str, b: &str| {
        Numeric::parse_text(a)
            .unwrap()
            .add(&Numeric::parse_text(b).unwrap())
            .to_text()
    };
    assert_eq!(add("0.1", "0.2"), "0.3");
    assert_eq!(
        add("99999999999999999999.99", "0.01"),
        "100000000000000000000.00"
    );
    assert_eq!(add("-5.5", "2.25"), "-3.25");
    assert_eq!(add("5.5", "-5.50"), "0.00");
    assert_eq!(add("-1", "-0.001"), "-1.001");
    assert_eq!(add("Infinity", "-Infinity"), "NaN");
    assert_eq!(add("Infinity", "5"), "Infinity");
    assert_eq!(add("NaN", "-Infinity"), "NaN");
}

#[test]
fn numeric_order_and_equality_by_value() {
    let n = |s: &str| Numeric::parse_text(s).unwrap();
    assert!(n("-Infinity") < n("-1000") && n("-1000") < n("-0.5") && n("-0.5") < n("0"));
    assert!(
        n("0") < n("0.001")
            && n("9.99") < n("10")
            && n("10") < n("Infinity")
            && n("Infinity") < n("NaN")
    );
    assert_eq!(n("1.0").canonical(), n("1.000").canonical());
    assert_eq!(n("0.00").canonical(), n("0").canonical());
}

#[test]
fn float_text_like_postgres() {
    // PG 15 output of the same values.
    for (v, text) in [
        (1e15, "1e+15"),
        (1e16, "1e+16"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.5e14, "150000000000000"),
        (1e-3 / 3.0, "0.0003333333333333333"),
        (1e22, "1e+22"),
        (1.5e-5, "1.5e-05"),
        (0.000123, "0.000123"),
        (-12345678901234.5, "-12345678901234.5"),
        (123456789012345.6, "123456789012345.6"),
        (5e-324, "5e-324"),
        (1e300, "1e+300"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Infinity"),
    ] {
        assert_eq!(floatfmt::float8(v), text);
    }
    for (v, text) in [
        (1e6f32, "1e+06"),
        (1e7, "1e+07"),
        (123456.7, "123456.7"),
        (1234567.8, "1.2345678e+06"),
        (1e-5, "1e-05"),
        (0.1, "0.1"),
        (3.4e38, "3.4e+38"),
        (-12345.5, "-12345.5"),
        (999999.9, "999999.9"),
        (1e-45, "1e-45"),
    ] {
        assert_eq!(floatfmt::float4(v), text);
    }
}

#[test]
fn datetime_text_reads_as_binary_numbers() {
    // Binary values of the same instants: days / µs since 2000-01-01.
    assert_eq!(datetime::date("2000-01-01"), Some(0));
    assert_eq!(datetime::date("1999-12-31"), Some(-1));
    assert_eq!(datetime::date("2024-02-29"), Some(8825));
    assert_eq!(datetime::date("0001-01-01 BC"), Some(-730_485));
    assert_eq!(
        datetime::timestamp("2000-01-02 00:00:01.5", false),
        Some(86_401_500_000)
    );
    assert_eq!(datetime::timestamp("2000-01-01 01:00:00+01", true), Some(0));
    assert_eq!(
        datetime::timestamp("2000-01-01 00:00:00-05:30", true),
        Some(19_800_000_000)
    );
    assert_eq!(datetime::timestamp("infinity", true), Some(i64::MAX));
    assert_eq!(datetime::time("24:00:00"), Some(86_400_000_000));
    assert_eq!(
        datetime::timetz("10:00:00+02"),
        Some((28_800_000_000, -7200))
    );
    assert_eq!(
        datetime::interval("1 year 2 mons -3 days +04:05:06.5"),
        Some(datetime::interval_binary(14_706_500_000, -3, 14))
    );
    assert_eq!(datetime::interval("@ 1 day"), None);
    assert_eq!(datetime::date("2024-13"), None);
}

#[test]
fn numeric_binary_round_trips_random_values() {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..5000 {
        let int: String = (0..rng.gen_range(0..30))
            .map(|_| char::from(b'0' + rng.gen_range(0..10)))
            .collect();
        let frac: String = (0..rng.gen_range(0..30))
            .map(|_| char::from(b'0' + rng.gen_range(0..10)))
            .collect();
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let neg = rng.gen_bool(0.5) && (int != "0" || frac.bytes().any(|b| b != b'0'));
        let text = format!(
            "{}{int}{}{frac}",
            if neg { "-" } else { "" },
            if frac.is_empty() { "" } else { "." }
        );
        let n = Numeric::parse_text(&text).unwrap();
        assert_eq!(n.to_text(), text);
        assert_eq!(Numeric::parse_binary(&n.to_binary()).unwrap(), n, "{text}");
        // a + b - b = a, exactly
        let b = Numeric::parse_text(&format!("{}.{frac}1", rng.gen_range(0..1000))).unwrap();
        let minus_b = Numeric::parse_text(&format!("-{}", b.to_text())).unwrap();
        assert_eq!(n.add(&b).add(&minus_b).canonical(), n.canonical(), "{text}");
    }
}

#[test]
fn interval_text_round_trips_like_postgres() {
    // PG 15 output (IntervalStyle postgres) and interval_send fields.
    for (text, months, days, micros) in [
        (
            "1 year 2 mons -3 days +04:05:06.5",
            14,
            -3,
            14_706_500_000i64,
        ),
        ("-1 days +02:00:00", 0, -1, 7_200_000_000),
        ("00:00:00", 0, 0, 0),
        ("-00:00:01", 0, 0, -1_000_000),
        ("100:00:00", 0, 0, 360_000_000_000),
        ("1 day", 0, 1, 0),
        ("-1 years -1 mons", -13, 0, 0),
        ("1 mon -1 days -00:00:00.000001", 1, -1, -1),
        ("2 years 1 mon 1 day 00:00:01", 25, 1, 1_000_000),
        ("-00:00:00.5", 0, 0, -500_000),
    ] {
        assert_eq!(datetime::interval_text(months, days, micros), text);
        assert_eq!(
            datetime::interval_parts(text),
            Some((months, days, micros)),
            "{text}"
        );
    }
}

#[test]
fn garbage_from_a_shard_is_an_error_never_a_panic() {
    use super::types::{key, ColType};
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let alphabet = b"0123456789-+:. BCinftyaNdsmonyear@e\x00\xff";
    let oids = [
        16, 17, 18, 19, 20, 21, 23, 25, 26, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1186,
        1266, 1700, 2950,
    ];
    for _ in 0..20000 {
        let len = rng.gen_range(0..40);
        let bytes: Vec<u8> = if rng.gen_bool(0.5) {
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        } else {
            (0..len).map(|_| rng.gen()).collect()
        };
        for &oid in &oids {
            let _ = key(
                ColType {
                    oid,
                    binary: rng.gen_bool(0.5),
                },
                &bytes,
                true,
            );
        }
        let s = String::from_utf8_lossy(&bytes);
        let _ = (
            datetime::date(&s),
            datetime::timestamp(&s, true),
            datetime::timetz(&s),
            datetime::interval(&s),
        );
        let _ = (Numeric::parse_text(&s), Numeric::parse_binary(&bytes));
        let _ = super::row::Description::parse(&bytes);
        let _ = super::row::Row::parse(&bytes, rng.gen_range(0..4));
        let _ = super::row::check(&bytes, rng.gen_range(0..4));
    }
    for s in [
        "99999999999999999:00:00",
        "9999999999999999999-01-01",
        "1-99999999999999-01",
        "00:00:00.1234567",
        "+99999999999",
    ] {
        let _ = (
            datetime::date(s),
            datetime::timestamp(&format!("2000-01-01 {s}"), true),
            datetime::interval(s),
        );
        let _ = datetime::timetz(&format!("10:00:00{s}"));
    }
}

#[test]
fn only_types_with_one_form_per_value_are_group_keys() {
    use super::types::ColType;
    let t = |oid| ColType { oid, binary: false };
    for oid in [
        16, 17, 18, 19, 20, 23, 25, 700, 1042, 1043, 1186, 1700, 2950, 1007, 1016, 1000,
    ] {
        assert!(t(oid).check_keyable(&[]).is_ok(), "{oid}");
    }
    // record, a table's row type, jsonb, numeric[], text[], inet, int4range.
    for oid in [2249, 16500, 3802, 1231, 1009, 869, 3904] {
        let err = t(oid).check_keyable(&[]).unwrap_err();
        assert_eq!(err.sqlstate, "0A000", "{oid}");
    }
    // An enum a shard named: its labels are its values.
    assert!(t(16500).check_keyable(&[16500]).is_ok());
    assert!(t(2249).check_keyable(&[2249]).is_err());
}
