-- Applied once per database, tracked by checksum.
CREATE INDEX todos_open_idx ON todos (id) WHERE NOT done;
