\set from random(1, 9001)
SELECT * FROM "public"."bench_list_items"(:from);
