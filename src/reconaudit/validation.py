"""The one way reconaudit turns a pydantic ``ValidationError`` into a message a user can act on.

Every room validates its parameters with a pydantic model (``extra="forbid"``) through
:func:`validate_params`; the config loader formats its errors with :func:`error_lines`.  A message
names the key, what was wrong and what would fix it: for an unknown key the closest allowed one
("did you mean") and the allowed keys, for a bad value pydantic's reason (which lists the choices
of a ``Literal``) and the value received.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError


def error_lines(err: ValidationError, *, allowed: Sequence[str] = (), noun: str = "parameter",
                unknown_hint: str = "") -> list[str]:
    """One line per error of ``err``.

    Parameters
    ----------
    err:
        The pydantic error.
    allowed:
        The allowed top-level keys, for the "did you mean" hint of an unknown top-level key.
    noun:
        What a key is called in the message (``parameter``, ``key``).
    unknown_hint:
        Appended to an unknown key's line when no close match is found.

    Returns
    -------
    list of str
        ``unknown <noun> 'loc' (did you mean 'x'?)`` or ``<noun> 'loc': <reason> (got <value>)``.
    """
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            top = len(e["loc"]) == 1  # ``allowed`` lists the top-level keys only
            close = difflib.get_close_matches(str(e["loc"][0]), list(allowed), n=1) if allowed and top else []
            hint = f" (did you mean {close[0]!r}?)" if close else (f" ({unknown_hint})" if unknown_hint else "")
            lines.append(f"unknown {noun} {loc!r}{hint}")
        else:
            lines.append(f"{noun} {loc!r}: {e['msg']} (got {e.get('input')!r})")
    return lines


def validate_params(model: type[BaseModel], params: dict, *, where: str,
                    error: type[Exception] = ValueError) -> BaseModel:
    """Validate ``params`` against the pydantic ``model``; on failure raise ``error`` naming the key.

    The message reads ``<where>: <one line per problem>; allowed parameters: a, b, c``.
    """
    try:
        return model.model_validate(dict(params))
    except ValidationError as e:
        allowed = sorted(model.model_fields)
        raise error(
            f"{where}: " + "; ".join(error_lines(e, allowed=allowed)) + f"; allowed parameters: {', '.join(allowed)}"
        ) from None
