//! PostgreSQL's hash partitioning, bit for bit, so a row the router places
//! on shard `i` of `n` is a row `satisfies_hash_partition(.., n, i, ..)`
//! accepts — the placement can be checked, and a table can move between a
//! PostgreSQL partitioned table and pgrouter shards without rehashing.
//!
//! The facts this follows (PostgreSQL's `partbounds.c`, `hashfn.c`,
//! `hashfunc.c`, `uuid.c`):
//! - a row's hash starts at 0 and each non-NULL key column's 64-bit
//!   extended hash, computed with the seed `HASH_PARTITION_SEED`, is folded
//!   in with `hash_combine64`; the partition is that value modulo the
//!   number of partitions (unsigned). A NULL key adds nothing: remainder 0.
//! - smallint, integer and bigint hash alike: the 64-bit value's halves are
//!   folded into 32 bits (`hashint8extended`) and hashed as one word.
//! - text, varchar (deterministic collations) and uuid hash their bytes
//!   with Bob Jenkins' lookup3 as PostgreSQL adapted it: a 64-bit seed
//!   mixed in first, the last partial block's third word keeps its lowest
//!   byte for the length, and the result is `b << 32 | c`.

/// `HASH_PARTITION_SEED`.
const SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// The value lookup3 starts from (before length and seed).
const START: u32 = 0x9e37_79b9_u32.wrapping_add(3_923_095);

/// The shard (partition remainder) of a row whose one key column hashed to
/// `hash` (None for NULL), among `shards` shards.
pub fn remainder(hash: Option<u64>, shards: u64) -> u64 {
    let row = match hash {
        Some(h) => combine64(0, h),
        None => 0,
    };
    row % shards.max(1)
}

/// `hash_combine64`.
fn combine64(a: u64, b: u64) -> u64 {
    a ^ b.wrapping_add(0x49a0_f4dd_15e5_a8e3).wrapping_add(a << 54).wrapping_add(a >> 7)
}

/// The seeded hash of an integer key (any of int2/int4/int8).
pub fn hash_int(v: i64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_word(folded, SEED)
}

/// The seeded hash of a text or uuid key's bytes.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_bytes_seeded(bytes, SEED)
}

/// `hash_bytes_uint32_extended`.
fn hash_word(k: u32, seed: u64) -> u64 {
    let mut a = START.wrapping_add(4);
    let (mut b, mut c) = (a, a);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    a = a.wrapping_add(k);
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_bytes_extended` (little-endian word order, as on the machines
/// PostgreSQL runs on here; both of its code paths give the same result).
fn hash_bytes_seeded(k: &[u8], seed: u64) -> u64 {
    let mut a = START.wrapping_add(k.len() as u32);
    let (mut b, mut c) = (a, a);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The tail: bytes 0..4 into a, 4..8 into b, 8..11 into c above its
    // lowest byte (kept for the length).
    for (i, &byte) in rest.iter().enumerate() {
        let byte = u32::from(byte);
        match i {
            0..=3 => a = a.wrapping_add(byte << (8 * i)),
            4..=7 => b = b.wrapping_add(byte << (8 * (i - 4))),
            _ => c = c.wrapping_add(byte << (8 * (i - 7))),
        }
    }
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_shards(values: impl IntoIterator<Item = i64>, n: u64) -> Vec<u64> {
        values.into_iter().map(|v| remainder(Some(hash_int(v)), n)).collect()
    }

    /// Values checked against PostgreSQL's `satisfies_hash_partition()`.
    #[test]
    fn bigint_matches_postgresql() {
        assert_eq!(int_shards(1..=12, 4), vec![0, 2, 1, 3, 1, 3, 3, 1, 1, 3, 1, 0]);
        assert_eq!(int_shards([1, 4, 5, 14, 19], 5), vec![0; 5]);
    }

    #[test]
    fn text_matches_postgresql() {
        let got: Vec<u64> =
            ["a", "b", "c", "d", "e", "f"].iter().map(|s| remainder(Some(hash_bytes(s.as_bytes())), 3)).collect();
        assert_eq!(got, vec![2, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn uuid_matches_postgresql() {
        let bytes: [u8; 16] =
            [0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44, 0x00, 0x00];
        assert_eq!(remainder(Some(hash_bytes(&bytes)), 4), 1);
    }

    #[test]
    fn null_is_remainder_zero() {
        for n in 1..10 {
            assert_eq!(remainder(None, n), 0);
        }
    }

    #[test]
    fn small_integers_hash_like_bigint() {
        // int2/int4 values go through the same fold, including negatives.
        for v in [-70000i64, -1, 0, 1, 32767, -32768, i32::MAX as i64, i32::MIN as i64] {
            let as_word = v as i32 as u32;
            assert_eq!(hash_int(v), hash_word(as_word, SEED), "{v}");
        }
    }
}
