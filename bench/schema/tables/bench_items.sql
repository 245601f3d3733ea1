CREATE TABLE public.bench_items (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL,
    active     boolean NOT NULL
);
