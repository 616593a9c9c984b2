//! Date/time values in PostgreSQL's ISO text output (DateStyle ISO,
//! IntervalStyle postgres) read as the numbers the binary format carries,
//! so that rows compare by value whatever format the client asked for:
//! dates as days and timestamps as microseconds since 2000-01-01 (UTC for
//! timestamptz: two rows of one zone can carry different offsets).

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A field of digits; at most 10 of them, so the arithmetic below, all
/// checked, never sees absurd values.
fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` (year of any width), with ` BC` already removed.
fn date_part(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (num(it.next()?)?, num(it.next()?)?, num(it.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

/// `HH:MM:SS[.ffffff]` as microseconds.
fn time_part(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, ':');
    let (h, m, rest) = (num(it.next()?)?, num(it.next()?)?, it.next().unwrap_or("0"));
    let (sec, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let sec = num(sec)?;
    let mut micros = 0i64;
    if !frac.is_empty() {
        let f = num(frac)?;
        micros = f * 10i64.pow(6u32.checked_sub(frac.len() as u32)?);
    }
    h.checked_mul(3600)?
        .checked_add(m * 60 + sec)?
        .checked_mul(1_000_000)?
        .checked_add(micros)
}

/// `+HH[:MM[:SS]]` / `-HH...` as seconds east of UTC.
fn offset_part(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let mut secs = 0;
    let mut unit = 3600;
    for part in rest.split(':') {
        let v = num(part)?;
        if unit == 0 || v > 99 {
            return None;
        }
        secs += v * unit;
        unit /= 60;
    }
    Some(sign * secs)
}

fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

fn infinity(s: &str) -> Option<i64> {
    match s {
        "infinity" => Some(i64::MAX),
        "-infinity" => Some(i64::MIN),
        _ => None,
    }
}

/// A date as days since 2000-01-01 (±infinity as i64 MAX/MIN).
pub fn date(s: &str) -> Option<i64> {
    if let Some(i) = infinity(s) {
        return Some(i);
    }
    let (s, bc) = strip_bc(s);
    date_part(s, bc)
}

/// A timestamp as microseconds since 2000-01-01; with `tz`, the text has
/// an offset and the result is UTC.
pub fn timestamp(s: &str, tz: bool) -> Option<i64> {
    if let Some(i) = infinity(s) {
        return Some(i);
    }
    let (s, bc) = strip_bc(s);
    let (d, rest) = s.split_once(' ')?;
    let days = date_part(d, bc)?;
    let (t, offset) = if tz {
        let at = rest.rfind(['+', '-'])?;
        (&rest[..at], offset_part(&rest[at..])?)
    } else {
        (rest, 0)
    };
    days.checked_mul(USECS_PER_DAY)?
        .checked_add(time_part(t)?)?
        .checked_sub(offset * 1_000_000)
}

/// A time as microseconds.
pub fn time(s: &str) -> Option<i64> {
    time_part(s)
}

/// A timetz as (time + zone, zone) with zone in seconds *west* of UTC,
/// which is how PostgreSQL stores and compares it.
pub fn timetz(s: &str) -> Option<(i64, i32)> {
    let at = s.rfind(['+', '-'])?;
    let zone = -offset_part(&s[at..])?;
    Some((
        time_part(&s[..at])?.checked_add(zone * 1_000_000)?,
        zone as i32,
    ))
}

/// An interval (IntervalStyle postgres: `1 year 2 mons -3 days +04:05:06.5`)
/// as PostgreSQL compares it: months of 30 days, days of 24 hours, in µs.
pub fn interval(s: &str) -> Option<i128> {
    let (months, days, micros) = interval_parts(s)?;
    Some(interval_binary(micros, days, months))
}

/// An interval's text (IntervalStyle postgres) as (months, days, µs).
pub fn interval_parts(s: &str) -> Option<(i32, i32, i64)> {
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut words = s.split(' ');
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, t) = match w.as_bytes().first() {
                Some(b'-') => (true, &w[1..]),
                Some(b'+') => (false, &w[1..]),
                _ => (false, w),
            };
            let v = time_part(t)?;
            micros = micros.checked_add(if neg { -v } else { v })?;
            continue;
        }
        let n: i64 = w.parse().ok()?;
        match words.next()? {
            "year" | "years" => months = months.checked_add(n.checked_mul(12)?)?,
            "mon" | "mons" => months = months.checked_add(n)?,
            "day" | "days" => days = days.checked_add(n)?,
            _ => return None,
        }
    }
    Some((months.try_into().ok()?, days.try_into().ok()?, micros))
}

/// PostgreSQL's interval output in IntervalStyle postgres (`EncodeInterval`).
pub fn interval_text(months: i32, days: i32, micros: i64) -> String {
    let mut out = String::new();
    let (mut is_zero, mut is_before) = (true, false);
    for (value, unit) in [
        ((months / 12) as i64, "year"),
        ((months % 12) as i64, "mon"),
        (days as i64, "day"),
    ] {
        if value == 0 {
            continue;
        }
        let space = if is_zero { "" } else { " " };
        let plus = if is_before && value > 0 { "+" } else { "" };
        let plural = if value != 1 { "s" } else { "" };
        out.push_str(&format!("{space}{plus}{value} {unit}{plural}"));
        is_before = value < 0;
        is_zero = false;
    }
    const HOUR: i64 = 3_600_000_000;
    let (hour, min) = (micros / HOUR, (micros % HOUR) / 60_000_000);
    let (sec, fsec) = ((micros % 60_000_000) / 1_000_000, micros % 1_000_000);
    if is_zero || micros != 0 {
        let minus = micros < 0;
        out.push_str(&format!(
            "{}{}{:02}:{:02}:{:02}",
            if is_zero { "" } else { " " },
            if minus {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            },
            hour.unsigned_abs(),
            min.unsigned_abs(),
            sec.unsigned_abs()
        ));
        if fsec != 0 {
            let frac = format!("{:06}", fsec.unsigned_abs());
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
    }
    out
}

/// The binary interval (µs, days, months) compared the same way.
pub fn interval_binary(micros: i64, days: i32, months: i32) -> i128 {
    (months as i128 * 30 + days as i128) * USECS_PER_DAY as i128 + micros as i128
}
