-- Objects the routing corpus (statements.txt) uses. Run directly on the
-- primary, once in each of the two test databases (one reached directly,
-- one through pghalo), so both start identical.

CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

CREATE SCHEMA app;

CREATE TABLE t (id int PRIMARY KEY, a int, b text);
INSERT INTO t SELECT g, g % 10, 'row ' || g FROM generate_series(1, 100) g;

CREATE TABLE u (id int PRIMARY KEY, t_id int, note text);
INSERT INTO u SELECT g, g % 50 + 1, 'note ' || g FROM generate_series(1, 30) g;

CREATE TABLE audit (id bigserial PRIMARY KEY, what text, at timestamptz DEFAULT now());

CREATE TABLE big_t (id int, payload text);

CREATE TABLE copy_t (id int, name text);
INSERT INTO copy_t VALUES (100, 'hundred');

CREATE TABLE app.items (id int PRIMARY KEY, price numeric);
INSERT INTO app.items VALUES (1, 10.5), (2, 20), (3, 99.99);

CREATE TABLE jsondocs (id int PRIMARY KEY, doc jsonb);
INSERT INTO jsondocs VALUES (1, '{"a": 1}'), (2, '{"b": 2}');

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE moods (id int, m mood);
INSERT INTO moods VALUES (1, 'sad'), (2, 'ok'), (3, 'ok');

CREATE TABLE parent (id int, kind text) PARTITION BY LIST (kind);
CREATE TABLE parent_a PARTITION OF parent FOR VALUES IN ('a');
CREATE TABLE parent_b PARTITION OF parent FOR VALUES IN ('b');
INSERT INTO parent VALUES (1, 'a'), (2, 'b'), (3, 'b');

CREATE TABLE trig_src (id int);
CREATE TABLE trig_log (src_id int);
CREATE FUNCTION trig_log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO trig_log VALUES (NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER trig_src_log AFTER INSERT ON trig_src FOR EACH ROW EXECUTE FUNCTION trig_log_insert();

CREATE SEQUENCE s;

CREATE VIEW v AS SELECT id, a FROM t WHERE a > 5;
CREATE MATERIALIZED VIEW mv AS SELECT a, count(*) AS n FROM t GROUP BY a;
CREATE UNIQUE INDEX mv_a ON mv (a);

-- A volatile SQL function that writes, and a plpgsql one with no
-- volatility given (volatile by default) that writes too.
CREATE FUNCTION my_volatile_insert(what text) RETURNS bigint LANGUAGE sql VOLATILE AS $$
    INSERT INTO audit (what) VALUES (what) RETURNING id
$$;
CREATE FUNCTION implicit_volatile_insert() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (what) VALUES ('implicit');
    RETURN 1;
END $$;
-- Readers: stable, immutable, a stable set-returning function.
CREATE FUNCTION get_label(i int) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT b FROM t WHERE id = i
$$;
CREATE FUNCTION compute_tax(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
    SELECT x * 0.2
$$;
CREATE FUNCTION app.price_of(i int) RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT price FROM app.items WHERE id = i
$$;
CREATE FUNCTION first_rows() RETURNS SETOF t LANGUAGE sql STABLE AS $$
    SELECT * FROM t WHERE id <= 3 ORDER BY id
$$;
CREATE PROCEDURE add_audit(what text) LANGUAGE sql AS $$
    INSERT INTO audit (what) VALUES (what)
$$;
