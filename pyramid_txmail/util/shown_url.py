"""A database URL as people may see it: in logs, in ``txmail-queue``'s output, in errors.

A secret can sit in two places of a SQLAlchemy URL: the netloc
(``user:SECRET@host``) and the query string, which SQLAlchemy hands to the
driver as connection parameters (libpq takes ``?password=``,
``?sslpassword=``, ``?oauth_client_secret=``; ``?passfile=`` names the file
that holds them).  SQLAlchemy's ``hide_password`` masks only the first, so
every place that shows a queue URL goes through :func:`shown_url`, and text
that may quote a URL or its parameters (a driver's error) through
:func:`scrub`.
"""
from __future__ import annotations

MASK = "***"

#: Query parameters whose values are never shown (compared without case).
SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile", "oauth_client_secret",
                           "passwd", "pwd"})


def _url(url):
    from sqlalchemy.engine import make_url

    return make_url(url if not isinstance(url, str) else url.strip())


def shown_url(url):
    """``url`` (a string or a SQLAlchemy URL) with its password and secret query
    parameters replaced by ``***``; a text that does not parse is not shown at all."""
    try:
        parsed = _url(url)
    except Exception:
        return "(a URL that does not parse; not shown: it may hold a password)"
    masked = {key: (MASK if key.lower() in SECRET_PARAMS else value)
              for key, value in parsed.query.items()}
    if masked != dict(parsed.query):
        parsed = parsed.set(query=masked)
    return parsed.render_as_string(hide_password=True)


def secrets_of(url):
    """The secret strings in ``url`` (its password, its secret parameters' values)."""
    try:
        parsed = _url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_PARAMS:
            found.extend([value] if isinstance(value, str) else value)
    return [str(s) for s in found if s]


def scrub(text, url):
    """``text`` with every secret of ``url`` in it replaced by ``***`` (a driver's
    error message may quote its connection parameters)."""
    text = str(text)
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
