"""Translated texts: one flat YAML catalogue per language in `appservice/domain/locales`.

English is complete and the fallback for a language or key that is not shipped.

Plurals: `{hours:hour|hours}` is "hour" when `hours` is 1 and "hours" otherwise, so a text
says `{hours} {hours:hour|hours}` ("1 hour", "2 hours"); German writes
`{hours} {hours:Stunde|Stunden}`. Every shipped language has these two forms (one, other);
a language with more forms needs a rule in `_plural()` first. Never "hour(s)".
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

FALLBACK = "en"


class CatalogueError(Exception):
    """A shipped catalogue file cannot be used; the message names the file and key."""


def placeholders(template: str) -> set[str]:
    """The `{names}` a template fills in."""
    return {
        field.split(".", 1)[0].split("[", 1)[0]
        for _, field, _, _ in string.Formatter().parse(template)
        if field is not None
    }


def _plural(spec: str, value: object) -> str:
    singular, plural = spec.split("|")
    return singular if int(str(value)) == 1 else plural


class _Formatter(string.Formatter):
    """str.format, plus the plural choice `{count:one|other}` (see the top of this file)."""

    def format_field(self, value: object, format_spec: str) -> str:
        if "|" in format_spec:
            return _plural(format_spec, value)
        return str(super().format_field(value, format_spec))


_FORMATTER = _Formatter()


def _format_problem(template: str) -> str | None:
    """Why a template cannot be formatted, checked when the catalogue is read."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:
        return str(error)
    for _, field, spec, _ in fields:
        if field is not None and spec and spec.count("|") != 1:
            return f"{{{field}:{spec}}} must be {{{field}:one|other}}"
    return None


def _read(name: str, text: str) -> dict[str, str]:
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError:
        raise CatalogueError(f"locales/{name}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogueError(f"locales/{name}: must be a mapping of keys to texts")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CatalogueError(f"locales/{name}: {key}: must be a text")
        problem = _format_problem(value)
        if problem:
            raise CatalogueError(f"locales/{name}: {key}: {problem}")
    return data


@functools.cache
def _shipped() -> Mapping[str, Mapping[str, str]]:
    """Every catalogue in the package, read once per process."""
    catalogues: dict[str, Mapping[str, str]] = {}
    for entry in (resources.files("gatekeeper.appservice.domain") / "locales").iterdir():
        if entry.name.endswith(".yaml"):
            language = entry.name.removesuffix(".yaml")
            texts = _read(entry.name, entry.read_text(encoding="utf-8"))
            catalogues[language] = MappingProxyType(texts)
    english = catalogues.get(FALLBACK)
    if not english:
        raise CatalogueError(f"locales/{FALLBACK}.yaml is missing or empty")
    for language, catalogue in catalogues.items():
        for key, template in catalogue.items():
            # A name English does not pass would make formatting fail when the mail is due.
            unknown = placeholders(template) - placeholders(english.get(key, ""))
            if key not in english or unknown:
                problem = "not in en.yaml" if key not in english else f"unknown {sorted(unknown)}"
                raise CatalogueError(f"locales/{language}.yaml: {key}: {problem}")
    return MappingProxyType(catalogues)


@functools.cache
def _merged() -> Mapping[str, Mapping[str, str]]:
    """Each shipped language's texts, with those of its fallbacks for the keys it lacks."""
    shipped = _shipped()
    return MappingProxyType(
        {
            language: MappingProxyType(
                {
                    key: template
                    for candidate in reversed(_candidates(language))
                    for key, template in shipped.get(candidate, {}).items()
                }
            )
            for language in shipped
        }
    )


@functools.cache
def _plain() -> Mapping[str, Mapping[str, str]]:
    """Per language, the texts that fill nothing in, formatted once: a page asks for dozens
    of them per request."""
    return MappingProxyType(
        {
            language: MappingProxyType(
                {
                    key: _FORMATTER.vformat(template, (), {})
                    for key, template in texts.items()
                    if not placeholders(template)
                }
            )
            for language, texts in _merged().items()
        }
    )


def _candidates(language: str) -> list[str]:
    # "de-AT" and "de_AT" use the German catalogue when there is no Austrian one.
    tag = language.strip().lower().replace("_", "-")
    return [tag, tag.split("-", 1)[0], FALLBACK]


# Bounded: the tags come from requests and accounts.
@functools.lru_cache(maxsize=256)
def _shipped_language(language: str) -> str:
    """The shipped catalogue that speaks for `language`."""
    shipped = _shipped()
    return next(candidate for candidate in _candidates(language) if candidate in shipped)


class Catalogue:
    """The shipped texts, looked up by language and key."""

    def __init__(self) -> None:
        self._catalogues = _shipped()
        self._merged = _merged()
        self._plain = _plain()

    @property
    def languages(self) -> list[str]:
        return sorted(self._catalogues)

    def keys(self, language: str = FALLBACK) -> set[str]:
        return set(self._catalogues.get(language, {}))

    def template(self, language: str, key: str) -> str:
        """The raw text for `key`, falling back to English; KeyError if English lacks it too."""
        return self._merged[_shipped_language(language)][key]

    def text(self, language: str, key: str, **params: str | int) -> str:
        plain = self._plain[_shipped_language(language)].get(key)
        if plain is not None:  # nothing to fill in: `params` change nothing
            return plain
        return _FORMATTER.vformat(self.template(language, key), (), params)

    def field_error(self, language: str, field: str, message: str) -> str:
        """A field's problem as a sentence for a page. The domain's `message` ("is
        required") stays as the JSON API's answer; its sentence is `error.<field>.<message>`,
        else `error.<message>`, else `error.other`, which quotes it."""
        for key in (f"error.{field}.{message}", f"error.{message}"):
            if key in self._catalogues[FALLBACK]:
                return self.text(language, key)
        return self.text(language, "error.other", problem=message)
