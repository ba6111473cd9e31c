"""Read a PasteDeploy .ini as plaster_pastedeploy reads it, without plaster.

``txmail-qp`` and ``txmail-queue`` need three things of the ini: its section names,
the ``[app:NAME]`` settings and its logging set-up.  Through plaster each of them
first looks the loader up among the entry points of every installed distribution
(reading each one's metadata), and plaster, PasteDeploy and that lookup import
``importlib.metadata``: together most of a cron pass's start-up over an empty
spool (issue 14).  A plain .ini path is read here with the same rules as
``plaster_pastedeploy.Loader`` -- ``here`` and ``__file__`` as defaults, keys
kept in their case, ``set NAME``/``get NAME`` options, the ``[DEFAULT]`` keys
left out of a section's settings -- and any other URI (``pastedeploy+egg:``,
a plaster_yaml file) goes through plaster as before.  tests/test_qp_startup.py
checks that both give the same settings.
"""
from __future__ import annotations

import configparser
import os


def is_plain_ini(path):
    """A file path (no ``scheme:`` of plaster's) ending in .ini."""
    return path.endswith(".ini") and "://" not in path and not _has_scheme(path)


def _has_scheme(path):
    head, sep, _ = path.partition(":")
    return bool(sep) and "/" not in head and os.sep not in head and len(head) > 1


class IniFile:
    """The subset of plaster's ``ILoader`` the console scripts use, for one .ini file."""

    def __init__(self, path):
        self.filepath = os.path.abspath(path)

    def _defaults(self):
        return {"here": os.path.dirname(self.filepath), "__file__": self.filepath}

    def _parser(self):
        """A fresh parser each time, as plaster_pastedeploy makes one per call (the
        ``set`` options of one read must not leak into the next)."""
        parser = configparser.ConfigParser(defaults=self._defaults())
        parser.optionxform = str  # keys keep their case
        with open(self.filepath) as f:
            parser.read_file(f)
        return parser

    def get_sections(self):
        return self._parser().sections()

    def get_settings(self, section):
        """The section's own keys (``[DEFAULT]`` ones only through ``get NAME``),
        values interpolated; an unknown section is ``{}``."""
        parser = self._parser()
        defaults = {key: parser.get("DEFAULT", key) for key in parser.defaults()}
        try:
            raw_items = parser.items(section)
        except configparser.NoSectionError:
            return {}
        settings, from_globals = {}, {}
        for option, value in raw_items:
            if option.startswith("set "):
                defaults[option[4:].strip()] = value
            elif option.startswith("get "):
                name = option[4:].strip()
                from_globals[name] = value
                settings[name] = None  # keeps the order
            elif option not in defaults:
                settings[option] = value
        for name, global_name in from_globals.items():
            settings[name] = defaults[global_name]
        return settings

    def setup_logging(self):
        """``logging.config.fileConfig`` with ``here``/``__file__``, keeping the
        loggers that already exist (as plaster_pastedeploy does)."""
        from logging.config import fileConfig

        fileConfig(self.filepath, self._defaults(), disable_existing_loggers=False)
