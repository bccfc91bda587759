"""Languages of the narration and the connection log: English (the source) and Spanish.

``--trace`` lines and the connection log lines (``open``, ``close``, ``rejected``,
the stop) are written in English and translated through standard-library
:mod:`gettext` catalogs shipped in ``sockecho/locale/<lang>/LC_MESSAGES/sockecho.mo``
(the ``.po`` beside each is the source; ``make catalogs`` extracts and compiles
them with Babel, and ``tests/test_i18n.py`` keeps them complete).

What is never translated: socket and kernel call names (``accept``, ``recvfrom``),
errno names, addresses, and the ready line ``listening on tcp://...``, which scripts
and tests read.

The language is process-wide and English until :func:`set_language` is called:
the CLI calls it with ``--lang`` or, without it, with the environment
(``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``, as gettext reads them), so
``LANG=es_AR.UTF-8 sockecho serve --trace`` narrates in Spanish. A library user
who wants Spanish log lines calls ``sockecho.i18n.set_language("es")``.
"""

from __future__ import annotations

import gettext
from pathlib import Path

DOMAIN = "sockecho"
LOCALE_DIR = Path(__file__).parent / "locale"
#: Languages with a catalog (English is the source and needs none).
LANGUAGES = ("en", "es")

_translation: gettext.NullTranslations = gettext.NullTranslations()
_decimal_comma = False


def set_language(lang: str | None) -> str:
    """Speak ``lang`` (``"en"``, ``"es"``, ``"es_AR"``...), or the environment's language when
    ``lang`` is None; a language without a catalog is English. Returns the language used."""
    global _translation, _decimal_comma
    languages = None if lang is None else [lang]
    _translation = gettext.translation(
        DOMAIN, localedir=LOCALE_DIR, languages=languages, fallback=True
    )
    used = "en"
    if isinstance(_translation, gettext.GNUTranslations):
        used = _translation.info().get("language", "en")
    _decimal_comma = used.startswith("es")
    return used


def _(message: str) -> str:
    """``message`` in the current language."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural of a message for ``count``, in the current language."""
    return _translation.ngettext(singular, plural, count)


def decimal(number: str) -> str:
    """A number already formatted with a point (``"0.25"``), with the language's decimal
    mark: a comma in Spanish (``"0,25"``)."""
    return number.replace(".", ",") if _decimal_comma else number


def N_(message: str) -> str:
    """Marks ``message`` for the catalog where it is defined; :func:`_` translates it when used."""
    return message
