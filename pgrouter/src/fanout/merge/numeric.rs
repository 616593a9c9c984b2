//! PostgreSQL's `numeric`, exactly: read from text or binary format,
//! compared, added, divided by a count (for avg) with PostgreSQL's result
//! scale, and written back in either format. No floats anywhere: a merged
//! sum or average must print the very digits one server would.

use std::cmp::Ordering;

/// A numeric value. The variant order is PostgreSQL's sort order:
/// -Infinity < every finite value < Infinity < NaN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    NegInf,
    Fin(Dec),
    Inf,
    NaN,
}

/// A finite decimal: `digits` (most significant first, no leading zeros,
/// empty for zero) times 10^-`scale`; `scale` is the display scale.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dec {
    pub neg: bool,
    pub digits: Vec<u8>,
    pub scale: u32,
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl Dec {
    pub fn from_i64(v: i64) -> Dec {
        Dec::from_int(v < 0, v.unsigned_abs() as u128)
    }

    pub fn from_int(neg: bool, mag: u128) -> Dec {
        let digits = if mag == 0 {
            Vec::new()
        } else {
            mag.to_string().bytes().map(|b| b - b'0').collect()
        };
        Dec {
            neg: neg && mag != 0,
            digits,
            scale: 0,
        }
    }

    fn trimmed(mut self) -> Dec {
        let lead = self.digits.iter().take_while(|&&d| d == 0).count();
        self.digits.drain(..lead);
        if self.digits.is_empty() {
            self.neg = false;
        }
        self
    }

    /// The magnitude's digits at scale `s` (>= self.scale).
    fn at_scale(&self, s: u32) -> Vec<u8> {
        let mut d = self.digits.clone();
        if d.is_empty() {
            // Zero stays without digits: lengths compare magnitudes.
            return d;
        }
        d.extend(std::iter::repeat_n(0, (s - self.scale) as usize));
        d
    }

    /// The same value with trailing fractional zeros removed: equal values
    /// (1.0 and 1.00) get equal canonical forms.
    pub fn canonical(&self) -> Dec {
        let mut c = self.clone();
        while c.scale > 0 && c.digits.last() == Some(&0) {
            c.digits.pop();
            c.scale -= 1;
        }
        if c.digits.is_empty() {
            c.scale = 0;
        }
        c
    }

    fn cmp_mag(&self, other: &Dec) -> Ordering {
        let s = self.scale.max(other.scale);
        let (a, b) = (self.at_scale(s), other.at_scale(s));
        a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
    }

    pub fn add(&self, other: &Dec) -> Dec {
        let s = self.scale.max(other.scale);
        let (a, b) = (self.at_scale(s), other.at_scale(s));
        let (neg, digits) = if self.neg == other.neg {
            (self.neg, add_mag(&a, &b))
        } else if self.cmp_mag(other) != Ordering::Less {
            (self.neg, sub_mag(&a, &b))
        } else {
            (other.neg, sub_mag(&b, &a))
        };
        Dec {
            neg,
            digits,
            scale: s,
        }
        .trimmed()
    }

    /// Base-10000 digits as PostgreSQL stores them (no leading or trailing
    /// zero groups) and the weight of the first one.
    fn groups(&self) -> (Vec<i16>, i16) {
        let frac_len = self.scale as usize;
        let (int_part, frac_part) = if self.digits.len() > frac_len {
            let cut = self.digits.len() - frac_len;
            (self.digits[..cut].to_vec(), self.digits[cut..].to_vec())
        } else {
            let mut f = vec![0; frac_len - self.digits.len()];
            f.extend_from_slice(&self.digits);
            (Vec::new(), f)
        };
        let mut int = vec![0u8; (4 - int_part.len() % 4) % 4];
        int.extend(int_part);
        let mut frac = frac_part;
        frac.extend(std::iter::repeat_n(0, (4 - frac.len() % 4) % 4));
        let to_group = |c: &[u8]| c.iter().fold(0i16, |acc, &d| acc * 10 + d as i16);
        let mut groups: Vec<i16> = int.chunks(4).map(to_group).collect();
        let mut weight = groups.len() as i16 - 1;
        groups.extend(frac.chunks(4).map(to_group));
        let lead = groups.iter().take_while(|&&g| g == 0).count();
        groups.drain(..lead);
        weight -= lead as i16;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        (groups, weight)
    }

    /// `self / n` rounded half away from zero at `rscale` digits (`n > 0`,
    /// `rscale >= self.scale`), like PostgreSQL's `div_var(..., round)`.
    fn div_count(&self, n: u64, rscale: u32) -> Dec {
        let num = self.at_scale(rscale);
        let (mut q, mut r) = (Vec::with_capacity(num.len()), 0u128);
        for d in num {
            r = r * 10 + d as u128;
            q.push((r / n as u128) as u8);
            r %= n as u128;
        }
        if 2 * r >= n as u128 {
            let mut i = q.len();
            loop {
                if i == 0 {
                    q.insert(0, 1);
                    break;
                }
                i -= 1;
                if q[i] == 9 {
                    q[i] = 0;
                } else {
                    q[i] += 1;
                    break;
                }
            }
        }
        Dec {
            neg: self.neg,
            digits: q,
            scale: rscale,
        }
        .trimmed()
    }
}

impl Ord for Numeric {
    fn cmp(&self, other: &Numeric) -> Ordering {
        match (self, other) {
            (Numeric::Fin(a), Numeric::Fin(b)) => match (a.neg, b.neg) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => a.cmp_mag(b),
                (true, true) => b.cmp_mag(a),
            },
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Numeric) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Numeric {
    fn rank(&self) -> u8 {
        match self {
            Numeric::NegInf => 0,
            Numeric::Fin(_) => 1,
            Numeric::Inf => 2,
            Numeric::NaN => 3,
        }
    }

    pub fn parse_text(s: &str) -> Option<Numeric> {
        match s {
            "NaN" => return Some(Numeric::NaN),
            "Infinity" => return Some(Numeric::Inf),
            "-Infinity" => return Some(Numeric::NegInf),
            _ => {}
        }
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        Some(Numeric::Fin(
            Dec {
                neg,
                digits,
                scale: frac.len() as u32,
            }
            .trimmed(),
        ))
    }

    pub fn parse_binary(b: &[u8]) -> Option<Numeric> {
        let word = |i: usize| b.get(i..i + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
        let (ndigits, weight, sign, dscale) =
            (word(0)? as usize, word(2)? as i16, word(4)?, word(6)?);
        match sign {
            NUMERIC_NAN => return Some(Numeric::NaN),
            NUMERIC_PINF => return Some(Numeric::Inf),
            NUMERIC_NINF => return Some(Numeric::NegInf),
            NUMERIC_POS | NUMERIC_NEG => {}
            _ => return None,
        }
        if b.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
            return None;
        }
        let groups: Vec<u16> = (0..ndigits)
            .map(|i| word(8 + 2 * i))
            .collect::<Option<_>>()?;
        if groups.iter().any(|&g| g > 9999) {
            return None;
        }
        // Digits from 10000^weight down to 10^-dscale.
        let scale = dscale as i64;
        let mut digits = Vec::new();
        let top = (weight as i64 + 1) * 4; // decimal digits before the point
        for pos in (-scale..top.max(0)).rev() {
            // pos: power of ten of this digit
            let g_index = weight as i64 - pos.div_euclid(4);
            let within = pos.rem_euclid(4);
            let g = usize::try_from(g_index)
                .ok()
                .and_then(|i| groups.get(i))
                .copied()
                .unwrap_or(0);
            digits.push(((g / 10u16.pow(within as u32)) % 10) as u8);
        }
        Some(Numeric::Fin(
            Dec {
                neg: sign == NUMERIC_NEG,
                digits,
                scale: dscale as u32,
            }
            .trimmed(),
        ))
    }

    pub fn to_text(&self) -> String {
        let d = match self {
            Numeric::NaN => return "NaN".into(),
            Numeric::Inf => return "Infinity".into(),
            Numeric::NegInf => return "-Infinity".into(),
            Numeric::Fin(d) => d,
        };
        let mut s = String::new();
        if d.neg {
            s.push('-');
        }
        let scale = d.scale as usize;
        let mut digits: Vec<u8> = vec![0; (scale + 1).saturating_sub(d.digits.len())];
        digits.extend_from_slice(&d.digits);
        let cut = digits.len() - scale;
        s.extend(digits[..cut].iter().map(|&x| (b'0' + x) as char));
        if scale > 0 {
            s.push('.');
            s.extend(digits[cut..].iter().map(|&x| (b'0' + x) as char));
        }
        s
    }

    pub fn to_binary(&self) -> Vec<u8> {
        let head = |n: u16, w: i16, sign: u16, dscale: u16| {
            let mut v = Vec::with_capacity(8);
            for x in [n, w as u16, sign, dscale] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            v
        };
        match self {
            Numeric::NaN => head(0, 0, NUMERIC_NAN, 0),
            // PostgreSQL 15 sends a display scale of 32 with the infinities.
            Numeric::Inf => head(0, 0, NUMERIC_PINF, 0x20),
            Numeric::NegInf => head(0, 0, NUMERIC_NINF, 0x20),
            Numeric::Fin(d) => {
                let (groups, weight) = d.groups();
                let sign = if d.neg { NUMERIC_NEG } else { NUMERIC_POS };
                let mut v = head(groups.len() as u16, weight, sign, d.scale as u16);
                for g in groups {
                    v.extend_from_slice(&g.to_be_bytes());
                }
                v
            }
        }
    }

    pub fn add(&self, other: &Numeric) -> Numeric {
        use Numeric::*;
        match (self, other) {
            (NaN, _) | (_, NaN) | (Inf, NegInf) | (NegInf, Inf) => NaN,
            (Inf, _) | (_, Inf) => Inf,
            (NegInf, _) | (_, NegInf) => NegInf,
            (Fin(a), Fin(b)) => Fin(a.add(b)),
        }
    }

    /// `self / count` as PostgreSQL's `numeric_div` computes it: the
    /// result scale of `select_div_scale` (at least 16 significant digits,
    /// no less than the dividend's scale), rounded half away from zero.
    pub fn div_count(&self, count: i64) -> Numeric {
        let d = match self {
            Numeric::Fin(d) => d,
            other => return other.clone(),
        };
        let n = count.unsigned_abs();
        let divisor = Dec::from_int(false, n as u128);
        let (g1, w1) = d.groups();
        let (g2, w2) = divisor.groups();
        let (first1, first2) = (
            g1.first().copied().unwrap_or(0),
            g2.first().copied().unwrap_or(0),
        );
        let mut qweight = w1 as i32 - w2 as i32;
        if first1 <= first2 {
            qweight -= 1;
        }
        let rscale = (16 - qweight * 4).max(d.scale as i32).clamp(0, 1000) as u32;
        let mut q = d.div_count(n, rscale);
        if count < 0 && !q.digits.is_empty() {
            q.neg = !q.neg;
        }
        Numeric::Fin(q)
    }

    /// A form equal for equal values, for grouping and DISTINCT.
    pub fn canonical(&self) -> Numeric {
        match self {
            Numeric::Fin(d) => Numeric::Fin(d.canonical()),
            other => other.clone(),
        }
    }
}

fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let n = a.len().max(b.len());
    let mut out = vec![0u8; n + 1];
    let mut carry = 0u8;
    for i in 0..n {
        let x = if i < a.len() { a[a.len() - 1 - i] } else { 0 };
        let y = if i < b.len() { b[b.len() - 1 - i] } else { 0 };
        let s = x + y + carry;
        out[n - i] = s % 10;
        carry = s / 10;
    }
    out[0] = carry;
    out
}

/// `a - b` for `a >= b` (same scale).
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i8;
    for i in 0..a.len() {
        let x = a[a.len() - 1 - i] as i8;
        let y = if i < b.len() {
            b[b.len() - 1 - i] as i8
        } else {
            0
        };
        let mut d = x - y - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out[a.len() - 1 - i] = d as u8;
    }
    out
}
