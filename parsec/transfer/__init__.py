"""Taking over an upstream Parsec deployment, and handing it back.

`parsec backend import` copies a database written by the upstream server (parsec-cloud
2.10.x) into ours; `parsec backend export` copies ours into an empty upstream database.
Both are synchronous one-shot tools (psycopg2, no reactor):

* `schema` — the upstream schema revisions we know, schema and emptiness checks, foreign keys
  dropped during the load and restored after it;
* `importer`, `exporter` — one `plans.TablePlan` per target table: the source query that
  produces the target's rows;
* `pgcopy` — streaming between the two connections (binary COPY through a bounded pipe, or
  batches through Python) with flat memory;
* `verify` — row counts and checksums of the same facts on both schemas;
* `progress` — the progress display; `run` — one transfer, start to end; `cli` — options.
"""
