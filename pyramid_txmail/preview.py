"""``config.include('pyramid_txmail.preview')``: the public path of the mail preview
pages, which live in :mod:`pyramid_txmail.dev.preview`."""
from .dev.preview import PreviewViews, development_reason, includeme

__all__ = ["includeme", "development_reason", "PreviewViews"]
