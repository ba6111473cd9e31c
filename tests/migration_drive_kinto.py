"""Drive kinto-emailer's own mail path in a real Kinto app: ``drive_kinto.py ROOT INI``.

Run by tests/test_migration_kinto_emailer.py in the migration venv, with kinto-emailer
imported from ROOT (the unpacked sdist, switched or not).  INI is a Kinto app
configuration written by the test (memory backends, ``kinto_emailer`` included, the
mail settings under test).  A bucket gets an emailer hook as kinto-emailer's README
shows it; creating a record then makes kinto-emailer build the notification before the
commit and send it from its after-commit subscriber (``send_immediately``, or
``send_to_queue`` when ``mail.queue_path`` is set), exactly as in production.

Prints one JSON line (the record id and the HTTP statuses); the mail itself is
checked by the test at its SMTP sink or spool.  kinto-emailer logs and swallows send
errors, so the log (on stderr) is where a failure to send shows.
"""
import base64
import json
import logging
import sys

from pyramid.paster import get_app
from webtest import TestApp

HOOK = {
    "resource_name": "record",
    "action": "create",
    "subject": "Record {record_id} created",
    "template": "Record {record_id} was created in {bucket_id}/{collection_id}.",
    "sender": "Kinto <kinto@example.com>",
    "recipients": ["Reviewer <reviewer@example.org>", "plain@example.org"],
}


def main(root, ini):
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    app = TestApp(get_app(ini))
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
    statuses = []
    bucket = app.put_json("/v1/buckets/b", {"data": {"kinto-emailer": {"hooks": [HOOK]}}},
                          headers=auth)
    statuses.append(bucket.status_int)
    statuses.append(app.put_json("/v1/buckets/b/collections/c", {}, headers=auth).status_int)
    record = app.post_json("/v1/buckets/b/collections/c/records",
                           {"data": {"title": "hello"}}, headers=auth)
    statuses.append(record.status_int)
    print(json.dumps({"record": record.json["data"]["id"], "statuses": statuses}))


if __name__ == "__main__":
    main(*sys.argv[1:])
