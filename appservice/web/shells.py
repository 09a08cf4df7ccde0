"""Pages rendered once and filled in per request.

A page's HTML depends on its template, language and context, which repeat from one request
to the next, and on a few values of the request's own (the CSRF token, the style nonce,
the language links, a link's token). The template runs once per page and context, with a
marker where each such value goes; the result is kept as pieces, and a request joins the
pieces with its values, escaped as the template would have escaped them. A value filled
in this way must only be printed by the template: never tested, filtered or compared.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jinja2
from markupsafe import escape

# How many rendered pages are kept (each a few kB); the least recently used goes first.
KEPT_SHELLS = 256

# Random per process, so no template text or context value can contain a marker.
_MARK = "gk" + secrets.token_hex(8)
_MARKED = re.compile(f"{_MARK}(\\w+){_MARK}")


def marker(name: str) -> str:
    """What the template is given in place of the request's value `name` (a word)."""
    return f"{_MARK}{name}{_MARK}"


def _frozen(value: Any) -> Any:
    """`value` as a key: containers become tuples, and each value keeps its type, so that
    `True` and `1` (equal, but printed differently) do not share a page."""
    if isinstance(value, str | bool | int | None):
        return (type(value), value)
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return (type(value), value)


class Shell:
    """A rendered page in pieces: text, then a value's name, then text, and so on."""

    def __init__(self, html: str) -> None:
        self.pieces = _MARKED.split(html)

    def fill(self, values: Mapping[str, str]) -> str:
        pieces = self.pieces
        filled = pieces.copy()
        for index in range(1, len(pieces), 2):
            filled[index] = escape(values[pieces[index]])
        return "".join(filled)


class Shells:
    def __init__(self, env: jinja2.Environment) -> None:
        self.env = env
        self._kept: OrderedDict[Any, Shell] = OrderedDict()

    def render(
        self,
        template: str,
        shared: tuple[Hashable, Callable[[], dict[str, Any]]],
        context: dict[str, Any],
        per_request: Mapping[str, str],
        keep: bool,
    ) -> str:
        """The template's HTML for `context`, with `per_request`'s values filled in.
        `shared`: what every page of a kind is given (the language's texts, the title),
        as a key that stands for it and a function that makes it when a page is rendered.
        Without `keep`, the page is rendered and forgotten: its context is part of the key,
        so a context holding anything secret (a form's password, a one-time code) must
        not be kept in memory for later requests."""
        shared_key, shared_context = shared
        try:
            key = (template, shared_key, tuple(per_request), _frozen(context)) if keep else None
            shell = self._kept.get(key)
        except TypeError:  # a context value that cannot be a key: render it as it is
            key, shell = None, None
        if shell is None:
            markers = {name: marker(name) for name in per_request}
            page = self.env.get_template(template)
            shell = Shell(page.render(**shared_context(), **context, **markers))
            if key is not None:
                self._kept[key] = shell
                if len(self._kept) > KEPT_SHELLS:
                    self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return shell.fill(per_request)
