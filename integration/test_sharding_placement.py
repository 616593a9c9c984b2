"""Shard placement is PostgreSQL's PARTITION BY HASH, bit for bit (SPEC §5
"Sharding", issue 17 item 1): for every key type, 100,000 random keys plus
the edge cases (i64 MIN/MAX, '', multibyte text, NULL) are placed by the
router's placement function (the `shard_of` example of pgrouter-parser,
built from the same code) for 2..16 shards, and a live PostgreSQL confirms
every answer with satisfies_hash_partition(). The check runs as a few big
queries over arrays, so it takes seconds."""
from __future__ import annotations

import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest

from harness.pg import APP_DB
from harness.router import router_binary

ROOT = Path(__file__).resolve().parent.parent
KEYS = 100_000
MODULI = range(2, 17)

TYPES = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "text": "text",
    "varchar": "varchar",
    "uuid": "uuid",
}


@pytest.fixture(scope="module")
def shard_of() -> Path:
    """The placement example, next to the pgrouter binary under test
    (`cargo test` builds examples; built here when it is missing)."""
    binary = Path(router_binary())
    exe = binary.parent / "examples" / "shard_of"
    if not exe.exists():
        profile = ["--release"] if binary.parent.name == "release" else ["--profile", "dev"]
        subprocess.run(["cargo", "build", "-q", "-p", "pgrouter-parser", "--example", "shard_of", *profile],
                       cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(binary.parent.parent)})
    assert exe.exists(), exe
    return exe


def random_text(rng: random.Random) -> str:
    alphabet = "abcXYZ09 _-'\"\\,{}日本語ßéü😀"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def keys_for(ty: str, rng: random.Random) -> list:
    if ty in ("smallint", "integer", "bigint"):
        bits = {"smallint": 16, "integer": 32, "bigint": 64}[ty]
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        edge = [lo, hi, 0, -1, 1, lo + 1, hi - 1]
        small = [rng.randint(-1000, 1000) for _ in range(KEYS // 10)]
        return edge + small + [rng.randint(lo, hi) for _ in range(KEYS - len(small))]
    if ty == "uuid":
        edge = [uuid.UUID(int=0), uuid.UUID(int=2 ** 128 - 1), uuid.UUID("550e8400-e29b-41d4-a716-446655440000")]
        return edge + [uuid.UUID(int=rng.getrandbits(128)) for _ in range(KEYS)]
    edge = ["", "a", "ab", "abc", "abcd", "x" * 11, "x" * 12, "x" * 13, "日本", "grüße", "😀" * 7]
    return edge + [random_text(rng) for _ in range(KEYS)]


@pytest.mark.parametrize("ty", list(TYPES))
def test_placement_equals_satisfies_hash_partition(ty, shard_of, primary):
    rng = random.Random(f"pgrouter-{ty}")
    keys = keys_for(ty, rng)
    lines = "\n".join(str(k).encode().hex() for k in keys) + "\n\\N\n"
    out = subprocess.run([str(shard_of), ty], input=lines.encode(), capture_output=True, check=True).stdout
    rows = [list(map(int, line.split())) for line in out.decode().splitlines()]
    assert len(rows) == len(keys) + 1
    assert rows[-1] == [0] * len(MODULI), "NULL goes to remainder 0"
    pg_type = TYPES[ty]
    cols = ", ".join(f"r{n} int" for n in MODULI)
    with primary.connect(APP_DB) as conn:
        conn.execute(f"DROP TABLE IF EXISTS sh_prop_{ty}")
        conn.execute(f"CREATE TABLE sh_prop_{ty} (k {pg_type}) PARTITION BY HASH (k)")
        try:
            conn.execute(f"CREATE TEMP TABLE sh_placed (k {pg_type}, {cols})")
            with conn.cursor().copy(f"COPY sh_placed FROM STDIN") as copy:
                for k, r in zip(keys, rows):
                    copy.write_row([str(k), *r])
            checks = ", ".join(
                f"count(*) FILTER (WHERE NOT satisfies_hash_partition('sh_prop_{ty}'::regclass, {n}, r{n}, k))"
                for n in MODULI)
            wrong = conn.execute(f"SELECT {checks} FROM sh_placed").fetchone()
            for n, count in zip(MODULI, wrong):
                if count:
                    sample = conn.execute(
                        f"SELECT k, r{n} FROM sh_placed WHERE NOT satisfies_hash_partition("
                        f"'sh_prop_{ty}'::regclass, {n}, r{n}, k) LIMIT 5").fetchall()
                    pytest.fail(f"{ty} over {n} shards: {count} keys placed unlike PostgreSQL, e.g. {sample}")
            assert all(0 <= r < n for row in rows for n, r in zip(MODULI, row))
            # Spread: every remainder is used (the keys are random).
            assert len({r[len(MODULI) - 1] for r in rows[:-1]}) == 16
        finally:
            conn.execute(f"DROP TABLE sh_prop_{ty}")
