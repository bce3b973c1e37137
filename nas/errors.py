"""The one-line error convention: a user error is a `ValueError` whose message is one line naming the flag or
file at fault. Libraries we call (safetensors, torch, SQLAlchemy, Ray) raise messages that span lines;
`one_line` folds them into ours."""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 200, with_type: bool = False) -> str:
    """`exc`'s message on one line, cut to `limit` characters; `with_type` puts its class name first."""
    text = " ".join(str(exc).split())[:limit]
    if not with_type:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
