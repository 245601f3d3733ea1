CREATE OR REPLACE FUNCTION list_todos()
RETURNS TABLE (id integer, title text, done boolean)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.title, t.done FROM todos t ORDER BY t.id
$$;
