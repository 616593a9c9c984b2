use bytes::BytesMut;

use super::*;

fn codec(name: &str) -> &'static ClientCodec {
    match lookup(name) {
        Lookup::Codec(c) => c,
        _ => panic!("{name} has no codec"),
    }
}

/// Every byte of every single-byte encoding reads as the character
/// PostgreSQL 15 converts it to (`testdata/pg15_single_byte.txt`), and a
/// byte PostgreSQL refuses is one the router cannot read either.
#[test]
fn single_byte_tables_are_postgresqls() {
    let data = include_str!("testdata/pg15_single_byte.txt");
    let mut seen = 0;
    for line in data.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split(' ');
        let name = words.next().unwrap();
        let codec = codec(name);
        for (i, word) in words.enumerate() {
            let byte = 0x80 + i as u8;
            let theirs = (word != "-").then(|| {
                char::from_u32(u32::from_str_radix(word, 16).unwrap())
                    .unwrap()
                    .to_string()
            });
            assert_eq!(codec.decode(&[byte]), theirs, "{name} byte {byte:#04x}");
        }
        seen += 1;
    }
    assert_eq!(seen, 27);
}

#[test]
fn every_readable_byte_is_written_back_as_itself() {
    for codec in CODECS.iter() {
        for byte in 0x80..=0xffu8 {
            if let Some(text) = codec.decode(&[byte]) {
                assert_eq!(codec.encode(&text), Some(vec![byte]), "{}", codec.name);
            }
        }
    }
}

#[test]
fn latin1_is_iso_8859_1_not_windows_1252() {
    let latin1 = codec("LATIN1");
    assert_eq!(
        latin1.decode(b"caf\xe9 \x80").as_deref(),
        Some("café \u{80}")
    );
    assert_eq!(latin1.encode("café"), Some(b"caf\xe9".to_vec()));
    assert_eq!(latin1.encode("€"), None);
    let win1252 = codec("WIN1252");
    assert_eq!(win1252.decode(b"\x80").as_deref(), Some("€"));
    assert_eq!(win1252.decode(b"\x81"), None);
}

#[test]
fn euc_encodings_read_as_postgresql_reads_them() {
    let jp = codec("EUC_JP");
    let text = "こんにちは、世界 'ｶﾅ'";
    let bytes = jp.encode(text).unwrap();
    assert!(
        bytes.contains(&0x8e),
        "half-width katakana are SS2 sequences"
    );
    assert_eq!(jp.decode(&bytes).as_deref(), Some(text));
    // JIS X 0212 (0x8F): encoding_rs reads it but never writes it, so a
    // statement with it would not reach the server as the client wrote it.
    assert_eq!(jp.decode(b"\x8f\xb0\xa1"), None);
    let cn = codec("EUC_CN");
    assert_eq!(
        cn.decode(b"\xa1\xa4\xa1\xaa").as_deref(),
        Some("\u{30fb}\u{2015}")
    );
    assert_eq!(
        cn.encode("\u{30fb}\u{2015}"),
        Some(b"\xa1\xa4\xa1\xaa".to_vec())
    );
    assert_eq!(
        cn.encode("\u{b7}"),
        None,
        "PostgreSQL's EUC_CN has no U+00B7"
    );
    // A UHC/GBK extension whose second byte is a letter: not EUC.
    assert_eq!(codec("EUC_KR").decode(b"\x81A"), None);
    assert_eq!(cn.decode(b"\x81A"), None);
}

#[test]
fn names_are_found_however_spelt() {
    for (name, canonical) in [
        ("latin1", "LATIN1"),
        ("ISO_8859_1", "LATIN1"),
        ("iso-8859-9", "LATIN5"),
        ("Windows-1252", "WIN1252"),
        ("win1252", "WIN1252"),
        ("koi8", "KOI8R"),
        ("EUC-JP", "EUC_JP"),
        ("iso_8859_5", "ISO_8859_5"),
    ] {
        assert_eq!(codec(name).name, canonical, "{name}");
    }
    for name in ["UTF8", "unicode", "utf-8"] {
        assert!(matches!(lookup(name), Lookup::Utf8), "{name}");
    }
    for name in [
        "SQL_ASCII",
        "SJIS",
        "BIG5",
        "GBK",
        "GB18030",
        "UHC",
        "JOHAB",
        "EUC_TW",
        "x",
    ] {
        assert!(matches!(lookup(name), Lookup::Other), "{name}");
    }
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn messages_go_back_to_the_servers_byte_for_byte() {
    let latin1 = codec("LATIN1");
    let parse = b"st\xe9\0select 'caf\xe9', $1\0\0\x01\0\0\0\x19";
    let decoded = decode_message(latin1, b'P', parse).unwrap().unwrap();
    assert_eq!(
        decoded,
        "sté\0select 'café', $1\0\0\x01\0\0\0\x19".as_bytes()
    );
    // Bind values stay the client's bytes.
    let bind = b"\0st\xe9\0\0\0\0\x01\0\0\0\x04na\xefv\0\0";
    let bind_decoded = decode_message(latin1, b'B', bind).unwrap().unwrap();
    assert!(bind_decoded.ends_with(b"na\xefv\0\0"));
    let mut buf = message(b'P', &decoded);
    buf.extend_from_slice(&message(b'B', &bind_decoded));
    buf.extend_from_slice(&message(b'S', b""));
    encode_messages(latin1, &mut buf);
    let mut want = message(b'P', parse);
    want.extend_from_slice(&message(b'B', bind));
    want.extend_from_slice(&message(b'S', b""));
    assert_eq!(buf, want);
    assert_eq!(decode_message(latin1, b'Q', b"select 1\0"), Ok(None));
    let undefined = decode_message(codec("WIN1252"), b'Q', b"select '\x81'\0");
    assert_eq!(undefined, Err(NotText));
}

#[test]
fn text_a_encoding_cannot_carry_becomes_an_error_in_its_place() {
    let latin1 = codec("LATIN1");
    let mut buf = message(b'Q', "select 'ぁ'\0".as_bytes());
    encode_messages(latin1, &mut buf);
    let sql = std::str::from_utf8(&buf[5..buf.len() - 1]).unwrap();
    assert!(
        sql.starts_with("DO $pgrouter$") && sql.contains("feature_not_supported"),
        "{sql}"
    );
    let mut buf = message(b'P', "s\0select 'ぁ'\0\0\x01\0\0\0\x19".as_bytes());
    encode_messages(latin1, &mut buf);
    assert!(buf.ends_with(b"END$pgrouter$\0\0\x01\0\0\0\x19"));
    let mut buf = message(b'E', "ぁ\0\0\0\0\0".as_bytes());
    encode_messages(latin1, &mut buf);
    assert!(buf[5..].starts_with(b"pgrouter: a name"));
    assert!(buf.ends_with(b"\0\0\0\0\0"));
}
