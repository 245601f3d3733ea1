-- 1,000-row listing (index range scan).
CREATE FUNCTION public.bench_list_items(p_from integer)
RETURNS SETOF public.bench_items
LANGUAGE sql STABLE AS $$
    SELECT *
    FROM public.bench_items AS i
    WHERE i.id >= p_from AND i.id < p_from + 1000
    ORDER BY i.id
$$;
