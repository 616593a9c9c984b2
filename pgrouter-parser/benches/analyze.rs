//! Cost of a statement's analysis: cold (pg_query parse + walk) and from the
//! cache (by exact text, and by literal-insensitive key as pgbench `-M simple`
//! needs, with the lookup order a session keeps, and by a session's template).
//! Run: `cargo bench -p pgrouter-parser`.

use criterion::{criterion_group, criterion_main, Criterion};
use pgrouter_parser::{analyze, normalize_key, AnalysisCache, Lookup, Template};
use std::hint::black_box;

const POINT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

const ANALYTIC: &str = "
WITH recent_orders AS (
    SELECT o.id, o.customer_id, o.created_at, o.total_cents
    FROM sales.orders o
    WHERE o.created_at >= now() - interval '90 days'
      AND o.status IN ('paid', 'shipped', 'delivered')
),
customer_totals AS (
    SELECT r.customer_id,
           count(*) AS order_count,
           sum(r.total_cents) AS revenue,
           avg(r.total_cents)::numeric(12, 2) AS avg_order,
           max(r.created_at) AS last_order
    FROM recent_orders r
    GROUP BY r.customer_id
    HAVING count(*) > 2
)
SELECT c.id,
       c.name,
       c.country,
       t.order_count,
       t.revenue,
       t.avg_order,
       rank() OVER (PARTITION BY c.country ORDER BY t.revenue DESC) AS country_rank,
       CASE WHEN t.revenue > 100000 THEN 'gold'
            WHEN t.revenue > 10000 THEN 'silver'
            ELSE 'bronze' END AS tier,
       coalesce(s.segment, 'none') AS segment
FROM customer_totals t
JOIN crm.customers c ON c.id = t.customer_id
LEFT JOIN crm.segments s ON s.customer_id = c.id AND s.valid_to IS NULL
WHERE c.deleted_at IS NULL
  AND c.country = ANY (ARRAY['FR', 'DE', 'NL'])
ORDER BY t.revenue DESC, c.id
LIMIT 100 OFFSET 0;
";

fn benches(c: &mut Criterion) {
    // Baselines: what pg_query alone costs.
    c.bench_function("pg_query::parse: point select", |b| b.iter(|| pg_query::parse(black_box(POINT), 0)));
    c.bench_function("pg_query::parse: 30-line analytic query", |b| b.iter(|| pg_query::parse(black_box(ANALYTIC), 0)));
    c.bench_function("analyze cold: point select", |b| b.iter(|| analyze(black_box(POINT), &[])));
    c.bench_function("analyze cold: 30-line analytic query", |b| b.iter(|| analyze(black_box(ANALYTIC), &[])));

    let cache = AnalysisCache::new(10_000, vec![]);
    cache.analyze(POINT);
    c.bench_function("cache hit: exact text", |b| b.iter(|| cache.analyze(black_box(POINT))));
    cache.analyze(ANALYTIC);
    c.bench_function("cache hit: exact text, analytic query", |b| b.iter(|| cache.analyze(black_box(ANALYTIC))));

    // pgbench -M simple: a new literal every time, so a miss by exact text
    // and a hit by normalized key.
    let texts: Vec<String> = (0..4096)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1 + i * 7919 % 100_000))
        .collect();
    let mut i = 0;
    c.bench_function("cache hit: normalized key (pgbench -M simple)", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            cache.analyze(black_box(&texts[i]))
        })
    });
    let mut order = Lookup::NormalizedFirst;
    c.bench_function("cache hit: normalized key first (a session's order)", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            cache.analyze_preferring(black_box(&texts[i]), &mut order)
        })
    });
    c.bench_function("normalize_key: point select", |b| b.iter(|| normalize_key(black_box(POINT))));

    // What a session does first with such a text: match its templates (the
    // text as it arrives, NUL-terminated in the message).
    let template = Template::new(POINT).expect("a template");
    let messages: Vec<Vec<u8>> = texts.iter().map(|t| [t.as_bytes(), b"\0"].concat()).collect();
    c.bench_function("template match (pgbench -M simple)", |b| {
        b.iter(|| {
            i = (i + 1) % messages.len();
            template.match_cstr(black_box(&messages[i]))
        })
    });
}

criterion_group!(analysis, benches);
criterion_main!(analysis);
