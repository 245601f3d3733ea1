\set id random(1, 10000)
SELECT * FROM "public"."bench_get_item"(:id);
