-- The same lookup labelled VOLATILE: always served by the primary (bench/replicas.sh compares the
-- routing decision's cost with it).
CREATE FUNCTION public.bench_get_item_volatile(p_id integer)
RETURNS TABLE (id integer, name text, price numeric, created_at timestamptz, active boolean)
LANGUAGE sql VOLATILE AS $$
    SELECT i.id, i.name, i.price, i.created_at, i.active
    FROM public.bench_items AS i
    WHERE i.id = p_id
$$;
