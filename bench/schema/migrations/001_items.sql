-- 10,000 rows for the lookup and listing benchmarks.
INSERT INTO public.bench_items (id, name, price, created_at, active)
SELECT g,
       'item-' || lpad(g::text, 5, '0') || ' ' || md5(g::text),
       round((g * 7.31)::numeric % 10000, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes',
       g % 3 <> 0
FROM generate_series(1, 10000) AS g;
