//! float4/float8 text output as PostgreSQL writes it with the default
//! `extra_float_digits = 1`: the shortest digits that read back exactly
//! (Rust finds the same ones), in fixed notation when the decimal exponent
//! is in [-4, 15) for float8 and [-4, 6) for float4, else `d.ddde+XX`.

/// float8 text.
pub fn float8(v: f64) -> String {
    special(v.is_nan(), v.is_infinite(), v > 0.0).unwrap_or_else(|| layout(&format!("{v:e}"), 15))
}

/// float4 text.
pub fn float4(v: f32) -> String {
    special(v.is_nan(), v.is_infinite(), v > 0.0).unwrap_or_else(|| layout(&format!("{v:e}"), 6))
}

/// NaN and the infinities, spelt as PostgreSQL spells them.
fn special(nan: bool, infinite: bool, positive: bool) -> Option<String> {
    match (nan, infinite, positive) {
        (true, _, _) => Some("NaN".into()),
        (_, true, true) => Some("Infinity".into()),
        (_, true, false) => Some("-Infinity".into()),
        _ => None,
    }
}

/// Lays out Rust's shortest `d.ddde<exp>` the way PostgreSQL does.
fn layout(sci: &str, fixed_below: i32) -> String {
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(if neg { "-" } else { "" });
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else if digits.len() as i32 <= exp + 1 {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (exp + 1) as usize - digits.len()));
        } else {
            out.push_str(&digits[..exp as usize + 1]);
            out.push('.');
            out.push_str(&digits[exp as usize + 1..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    out
}
