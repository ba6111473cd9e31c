"""``from pyramid_txmail.builder import Mail``: the public path of the message builder,
which lives in :mod:`pyramid_txmail.compose.builder` (also ``from pyramid_txmail import Mail``)."""
from .compose.builder import Mail

__all__ = ["Mail"]
