#!/usr/bin/env python3
"""A scripted psycopg 3 session whose canonical JSON transcript is printed
on stdout.

proxy_clients.rs runs it once against a PostgreSQL server directly and once
through pghalo, and asserts that the transcripts are identical: whatever the
proxy does must be invisible to a real driver. Everything recorded is
deterministic for one server (no pids, no clock readings, no OIDs of tables
created here); the tables are TEMP tables, so runs never meet.

Usage: psycopg_session.py CONNINFO   (libpq reads PGPASSFILE for the password)
"""

import datetime
import decimal
import hashlib
import ipaddress
import json
import re
import sys
import uuid

import psycopg
from psycopg.types.json import Jsonb

TRANSCRIPT = []
NOTICES = []

PARAMETERS = [
    "server_version",
    "server_encoding",
    "client_encoding",
    "application_name",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "in_hot_standby",
]

DIAG_FIELDS = [
    "severity",
    "severity_nonlocalized",
    "sqlstate",
    "message_primary",
    "message_detail",
    "message_hint",
    "statement_position",
    "internal_position",
    "internal_query",
    "context",
    "schema_name",
    "table_name",
    "column_name",
    "datatype_name",
    "constraint_name",
    "source_function",
]


def canon(value):
    """A JSON-able rendering that keeps the Python type visible."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return "float:" + repr(value)
    if isinstance(value, decimal.Decimal):
        return "decimal:" + str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    if isinstance(value, datetime.datetime):
        return "datetime:" + value.isoformat()
    if isinstance(value, datetime.date):
        return "date:" + value.isoformat()
    if isinstance(value, datetime.time):
        return "time:" + value.isoformat()
    if isinstance(value, datetime.timedelta):
        return "timedelta:" + repr(value)
    if isinstance(value, (uuid.UUID, ipaddress._BaseAddress, ipaddress._BaseNetwork)):
        return type(value).__name__ + ":" + str(value)
    if isinstance(value, (list, tuple)):
        return [canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canon(v) for k, v in sorted(value.items())}
    return type(value).__name__ + ":" + str(value)


def diag(error):
    d = error.diag
    out = {"class": type(error).__name__}
    for field in DIAG_FIELDS:
        out[field] = getattr(d, field)
    return out


def on_notice(d):
    NOTICES.append(
        {
            "severity": d.severity_nonlocalized,
            "sqlstate": d.sqlstate,
            "message": d.message_primary,
            "detail": d.message_detail,
            "hint": d.message_hint,
        }
    )


def describe(cur):
    if cur.description is None:
        return None
    return [[c.name, c.type_code] for c in cur.description]


def step(name, fn):
    """Runs one step; records its result or its error, and the notices it
    raised."""
    record = {"step": name}
    try:
        record["result"] = fn()
    except psycopg.Error as e:
        record["error"] = diag(e)
    record["notices"] = NOTICES[:]
    NOTICES.clear()
    TRANSCRIPT.append(record)


def run(cur, sql, params=None, **kwargs):
    cur.execute(sql, params, **kwargs)
    out = {
        "status": cur.statusmessage,
        "rowcount": cur.rowcount,
        "columns": describe(cur),
    }
    if cur.description is not None:
        out["rows"] = canon(cur.fetchall())
    return out


TYPES_SQL = """
SELECT
    1::int2 AS i2, 2147483647::int4 AS i4, (-9223372036854775808)::int8 AS i8,
    12345678901234567890.123456789::numeric AS big_numeric,
    'NaN'::numeric AS nan_numeric, (-0.000001)::numeric(20, 10) AS small_numeric,
    1.5::float4 AS f4, 'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf,
    'NaN'::float8 AS nan, 0.1::float8 AS tenth,
    'héllo wörld ✓ 𝄞'::text AS unicode, ''::text AS empty, NULL::text AS null_text,
    'x'::char(3) AS bpchar, 'abc'::varchar(5) AS varchar, 'name'::name AS name,
    '\\x00ff10'::bytea AS bytea, ''::bytea AS empty_bytea,
    '{"a": [1, 2, {"b": null}], "c": "d"}'::json AS json,
    '{"b": 1, "a": [true, false, 1.50]}'::jsonb AS jsonb,
    ARRAY[1, 2, NULL]::int4[] AS int_array,
    ARRAY['a', NULL, 'c"q', 'with,comma', '']::text[] AS text_array,
    '{{1,2},{3,4}}'::int8[] AS matrix,
    ARRAY[1.5, NULL]::numeric[] AS numeric_array,
    '{}'::int4[] AS empty_array,
    '2024-02-29 12:34:56.789012'::timestamp AS ts,
    '2024-02-29 12:34:56.789012+05:30'::timestamptz AS tstz,
    '1999-12-31'::date AS d,
    '23:59:59.999999'::time AS t,
    '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
    '-1 day -00:00:01'::interval AS negative_iv,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
    '192.168.0.1/24'::inet AS inet, '10.0.0.0/8'::cidr AS cidr,
    true AS yes, false AS no, NULL::bool AS unknown,
    '[1,10)'::int4range AS range, 'ab'::"char" AS ch,
    12::oid AS oid
"""


def main():
    conninfo = sys.argv[1]
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.add_notice_handler(on_notice)
    cur = conn.cursor()
    bcur = conn.cursor(binary=True)

    step(
        "connection",
        lambda: {
            "parameters": {p: conn.info.parameter_status(p) for p in PARAMETERS},
            "server_version": conn.info.server_version,
            "protocol_version": conn.pgconn.protocol_version,
            "transaction_status": conn.info.transaction_status.name,
        },
    )

    step(
        "ddl",
        lambda: [
            run(cur, "CREATE TEMP TABLE items ("
                "id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), "
                "data jsonb, blob bytea, tags text[], at timestamptz, "
                "f float8, u uuid, ok bool)"),
            run(cur, "CREATE TEMP TABLE copy_t (id int, name text, data jsonb)"),
            run(cur, "CREATE INDEX ON items (name)"),
            run(cur, "DROP TABLE IF EXISTS no_such_table_here"),
        ],
    )

    rows = [
        (1, "one", decimal.Decimal("1.10"), Jsonb({"k": [1, 2]}), b"\x00\x01",
         ["a", "b"], datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc),
         1.25, uuid.UUID("12345678-1234-5678-1234-567812345678"), True),
        (2, "two ✓", None, Jsonb(None), b"", [], None, float("inf"), None, False),
        (3, "it's \"quoted\"\\", decimal.Decimal("-99999999.99"), Jsonb({"nested": {"x": None}}),
         bytes(range(256)), ["x", None], datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc),
         float("nan"), uuid.UUID(int=0), None),
    ]
    insert = ("INSERT INTO items (id, name, price, data, blob, tags, at, f, u, ok) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
    step("insert_one", lambda: run(cur, insert, rows[0]))

    def insert_many():
        cur.executemany(insert, rows[1:])
        return {"status": cur.statusmessage, "rowcount": cur.rowcount}

    step("insert_many", insert_many)
    step(
        "insert_returning",
        lambda: run(cur, "INSERT INTO items (id, name) VALUES (%s, %s), (%s, %s) RETURNING id, name, price",
                    (10, "ten", 11, "eleven")),
    )
    step("insert_binary_params", lambda: run(bcur, insert, (20, "binary", decimal.Decimal("3.14"),
                                                          Jsonb([1, "x"]), b"\xff", ["q"], None, -0.0,
                                                          None, True)))

    select = "SELECT * FROM items ORDER BY id"
    step("select_text", lambda: run(cur, select))
    step("select_binary", lambda: run(bcur, select))
    step("types_text", lambda: run(cur, TYPES_SQL))
    step("types_binary", lambda: run(bcur, TYPES_SQL))
    step("params_roundtrip_text", lambda: run(
        cur, "SELECT %s::int8, %s::numeric, %s::text, %s::bytea, %s::timestamptz, %s::int[], %s::jsonb",
        (2**62, decimal.Decimal("1e-20"), "ünï", b"\x00\x7f", datetime.datetime(2000, 2, 29, tzinfo=datetime.timezone.utc),
         [[1, 2], [3, 4]], Jsonb({"z": 1}))))
    step("params_roundtrip_binary", lambda: run(
        bcur, "SELECT %s::int8, %s::numeric, %s::text, %s::bytea, %s::timestamptz, %s::int[], %s::jsonb",
        (2**62, decimal.Decimal("1e-20"), "ünï", b"\x00\x7f", datetime.datetime(2000, 2, 29, tzinfo=datetime.timezone.utc),
         [[1, 2], [3, 4]], Jsonb({"z": 1}))))

    # Server-side errors, each followed by proof that the session goes on.
    for name, sql, params in [
        ("division_by_zero", "SELECT 1/0", None),
        ("division_by_zero_param", "SELECT %s::int / 0", (1,)),
        ("unique_violation", "INSERT INTO items (id, name) VALUES (1, 'again')", None),
        ("not_null_violation", "INSERT INTO items (id, name) VALUES (99, NULL)", None),
        ("undefined_table", "SELECT * FROM no_such_table", None),
        ("syntax_error", "SELEC 1", None),
        ("invalid_text", "SELECT 'abc'::int", None),
        ("custom_error", "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', 7 "
                         "USING ERRCODE = 'PH001', DETAIL = 'the detail', HINT = 'the hint'; END $$", None),
        ("error_in_function", "SELECT to_number('x', 'NOPE') + (SELECT 1/0)", None),
    ]:
        step("error_" + name, lambda sql=sql, params=params: run(cur, sql, params))
        step("after_" + name, lambda: run(cur, "SELECT 'alive'"))

    step(
        "notices",
        lambda: [
            run(cur, "DO $$ BEGIN RAISE NOTICE 'hello %', 42; "
                     "RAISE WARNING 'careful' USING DETAIL = 'some detail', HINT = 'a hint'; "
                     "RAISE INFO 'info level'; END $$"),
            run(cur, "SET client_min_messages = warning"),
            run(cur, "DO $$ BEGIN RAISE NOTICE 'hidden'; RAISE WARNING 'shown'; END $$"),
            run(cur, "RESET client_min_messages"),
        ],
    )

    def copy_in():
        with cur.copy("COPY copy_t (id, name, data) FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, f"name {i}\twith tab", json.dumps({"i": i})))
        out = {"status": cur.statusmessage, "rowcount": cur.rowcount}
        with bcur.copy("COPY copy_t (id, name, data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "jsonb"])
            for i in range(2000, 2100):
                copy.write_row((i, f"binary {i}", Jsonb({"b": i})))
        out["binary_status"] = bcur.statusmessage
        out["count"] = run(cur, "SELECT count(*), sum(id), count(DISTINCT name) FROM copy_t")["rows"]
        return out

    step("copy_in", copy_in)

    def copy_out():
        out = {}
        with cur.copy("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        out["text_bytes"] = len(data)
        out["text_sha256"] = hashlib.sha256(data).hexdigest()
        out["text_head"] = data[:200].decode()
        with cur.copy("COPY (SELECT id, name FROM copy_t WHERE id < 5 ORDER BY id) TO STDOUT") as copy:
            out["rows"] = [list(r) for r in copy.rows()]
        with bcur.copy("COPY (SELECT id, name, data FROM copy_t WHERE id >= 2095 ORDER BY id) "
                       "TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "jsonb"])
            out["binary_rows"] = canon(list(copy.rows()))
        with cur.copy("COPY (SELECT id, name FROM copy_t ORDER BY id) TO STDOUT (FORMAT CSV, HEADER)") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        out["csv_sha256"] = hashlib.sha256(data).hexdigest()
        out["status"] = cur.statusmessage
        return out

    step("copy_out", copy_out)

    def copy_bad_data():
        with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
            copy.write(b"1\tok\nnot-a-number\tbad\n3\tok\n")
        return cur.statusmessage

    step("copy_bad_data", copy_bad_data)

    class ClientAbort(Exception):
        pass

    def copy_client_abort():
        try:
            with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
                copy.write_row((1, "never"))
                raise ClientAbort("changed my mind")
        except ClientAbort:
            return "aborted by the client"

    step("copy_client_abort", copy_client_abort)
    step("count_after_copies", lambda: run(cur, "SELECT count(*) FROM copy_t"))

    def prepared():
        out = []
        for i in range(8):
            cur.execute("SELECT %s::int * 2, %s::text || '!', %s::numeric", (i, str(i), decimal.Decimal(i) / 3),
                        prepare=True)
            out.append(canon(cur.fetchall()))
        for i in range(3):
            bcur.execute("SELECT id, name FROM items WHERE id > %s ORDER BY id", (i,), prepare=True)
            out.append(canon(bcur.fetchall()))
        try:
            cur.execute("SELECT 10 / %s::int", (0,), prepare=True)
        except psycopg.Error as e:
            out.append(diag(e))
        cur.execute("SELECT 10 / %s::int", (5,), prepare=True)
        out.append(canon(cur.fetchall()))
        out.append(run(cur, "SELECT name, statement, parameter_types::text FROM pg_prepared_statements "
                            "ORDER BY name"))
        return out

    step("prepared", prepared)

    def sql_prepare():
        return [
            run(cur, "PREPARE named_plan (int) AS SELECT $1 + 1"),
            run(cur, "EXECUTE named_plan(41)"),
            run(cur, "DEALLOCATE named_plan"),
        ]

    step("sql_prepare", sql_prepare)

    def rolled_back_transaction():
        out = {}
        try:
            with conn.transaction():
                cur.execute("INSERT INTO items (id, name) VALUES (100, 'rolled back')")
                out["inside"] = conn.info.transaction_status.name
                raise psycopg.Rollback()
        finally:
            out["after"] = conn.info.transaction_status.name
        out["count"] = run(cur, "SELECT count(*) FROM items WHERE id = 100")["rows"]
        with conn.transaction():
            cur.execute("INSERT INTO items (id, name) VALUES (101, 'kept')")
            with conn.transaction() as inner:
                cur.execute("INSERT INTO items (id, name) VALUES (102, 'savepoint rolled back')")
                inner_status = conn.info.transaction_status.name
                raise psycopg.Rollback(inner)
        out["inner_status"] = inner_status
        out["savepoint"] = run(cur, "SELECT id FROM items WHERE id > 100 ORDER BY id")["rows"]
        try:
            with conn.transaction():
                cur.execute("INSERT INTO items (id, name) VALUES (103, 'failed')")
                try:
                    cur.execute("SELECT 1/0")
                except psycopg.Error as e:
                    out["in_tx_error"] = diag(e)
                    out["failed_status"] = conn.info.transaction_status.name
                cur.execute("SELECT 1")
        except psycopg.Error as e:
            out["aborted_error"] = diag(e)
        out["failed_count"] = run(cur, "SELECT count(*) FROM items WHERE id = 103")["rows"]
        cur.execute("BEGIN")
        cur.execute("INSERT INTO items (id, name) VALUES (104, 'explicit')")
        out["explicit_status"] = conn.info.transaction_status.name
        cur.execute("ROLLBACK")
        out["explicit_count"] = run(cur, "SELECT count(*) FROM items WHERE id = 104")["rows"]
        out["final_status"] = conn.info.transaction_status.name
        return out

    step("transactions", rolled_back_transaction)

    def server_cursor():
        with conn.transaction():
            with conn.cursor(name="big_cursor") as named:
                named.itersize = 100
                named.execute("SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
                first = canon(named.fetchmany(3))
                rest = named.fetchall()
                return {"first": first, "rest": len(rest), "last": canon(rest[-1]),
                        "columns": describe(named)}

    step("server_cursor", server_cursor)

    def pipeline():
        out = {}
        with conn.pipeline():
            c1 = conn.execute("SELECT 1 AS a")
            c2 = conn.execute("SELECT %s::text AS b", ("two",))
            c3 = conn.execute("INSERT INTO items (id, name) VALUES (200, 'pipelined') RETURNING id")
        out["ok"] = [canon(c.fetchall()) for c in (c1, c2, c3)]
        try:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT 1/0")
                conn.execute("SELECT 3")
        except psycopg.Error as e:
            out["error"] = diag(e)
        out["after"] = run(cur, "SELECT count(*) FROM items WHERE id = 200")["rows"]
        return out

    step("pipeline", pipeline)

    def notify():
        # A session's own notifications arrive before the ReadyForQuery of
        # the statement that committed them, so the handler has them when
        # execute() returns (and this works with every psycopg 3 version).
        got = []
        conn.add_notify_handler(lambda n: got.append([n.channel, n.payload]))
        cur.execute("LISTEN pghalo_diff")
        cur.execute("NOTIFY pghalo_diff, 'payload one'")
        cur.execute("SELECT pg_notify('pghalo_diff', 'payload two')")
        cur.execute("UNLISTEN *")
        cur.execute("NOTIFY pghalo_diff, 'not heard'")
        return got

    step("notify", notify)

    def large():
        out = {}
        for label, c in (("text", cur), ("binary", bcur)):
            c.execute("SELECT g, repeat(md5(g::text), 4), g::numeric / 7 FROM generate_series(1, 50000) g")
            rows = c.fetchall()
            digest = hashlib.sha256(json.dumps(canon(rows)).encode()).hexdigest()
            out[label] = {"rows": len(rows), "sha256": digest}
        return out

    step("large", large)

    step(
        "session_state",
        lambda: run(cur, "SELECT current_user::text, session_user::text, current_database()::text, "
                         "current_setting('search_path'), current_setting('application_name'), "
                         "pg_current_xact_id_if_assigned() IS NULL, "
                         "(SELECT count(*) FROM pg_prepared_statements), "
                         "current_setting('transaction_isolation')"),
    )
    step("final", lambda: {"transaction_status": conn.info.transaction_status.name,
                           "closed": conn.closed})
    conn.close()
    text = json.dumps(TRANSCRIPT, indent=1, sort_keys=True, ensure_ascii=False)
    # Temp schemas are numbered by backend slot, which differs run to run.
    text = re.sub(r"pg_temp_[0-9]+", "pg_temp_N", text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
