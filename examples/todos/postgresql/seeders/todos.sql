-- Runs only while the table is empty: every new database starts with this to-do.
INSERT INTO todos (id, title) VALUES (1, 'Read the quick start');
