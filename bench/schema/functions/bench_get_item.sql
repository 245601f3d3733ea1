-- 1-row lookup by primary key.
CREATE FUNCTION public.bench_get_item(p_id integer)
RETURNS TABLE (id integer, name text, price numeric, created_at timestamptz, active boolean)
LANGUAGE sql STABLE AS $$
    SELECT i.id, i.name, i.price, i.created_at, i.active
    FROM public.bench_items AS i
    WHERE i.id = p_id
$$;
