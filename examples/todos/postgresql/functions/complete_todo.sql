CREATE OR REPLACE FUNCTION complete_todo(p_id integer)
RETURNS boolean
LANGUAGE sql AS $$
    UPDATE todos SET done = true WHERE id = p_id RETURNING true
$$;
