"""Run schema cases through the serializers of the real parsec-cloud 2.10.0 package.

Executed by test_reference_parity.py with the client virtualenv's interpreter (never imported
by our own test run): reads `{"cases": [...]}` as msgpack on stdin, writes
`{"results": [...]}` as msgpack on stdout. A case is `{"op": "req"|"rep", "ser": <name of
the reference's `<name>_serializer`>, "data": <map>}`.

* `req`: load the request the way the reference server does (`req_load`):
  `{"ok": true}` or `{"ok": false, "errors": <validation errors>}`;
* `rep`: load the reply the way the client does (`rep_load`) and dump it back the way the
  server does (`rep_dump`): `{"ok": true, "dumped": <map>}` or `{"ok": false, "errors": ...}`.
"""

import sys

import parsec.api.protocol as reference
from parsec.api.protocol.base import packb, unpackb
from parsec.serde.exceptions import SerdeValidationError


def run(case):
    serializer = getattr(reference, case["ser"] + "_serializer")
    data = case["data"]
    try:
        if case["op"] == "req":
            serializer.req_load(data)
            return {"ok": True}
        loaded = serializer.rep_load(data)
    except SerdeValidationError as exc:
        return {"ok": False, "errors": exc.errors}
    return {"ok": True, "dumped": serializer.rep_dump(loaded)}


def main():
    cases = unpackb(sys.stdin.buffer.read())["cases"]
    results = []
    for case in cases:
        try:
            results.append(run(case))
        except Exception as exc:
            results.append({"crash": repr(exc)})
    sys.stdout.buffer.write(packb({"results": results}))


if __name__ == "__main__":
    main()
