CREATE OR REPLACE FUNCTION add_todo(p_title text)
RETURNS TABLE (id integer, title text, done boolean)
LANGUAGE sql AS $$
    INSERT INTO todos (title) VALUES (p_title) RETURNING todos.id, todos.title, todos.done
$$;
