"""The executors that run a synthesis pipeline (the protocol is in ../framework.py): `local` runs it in
this process, `ray` on a Ray cluster; both write the same bytes. `executor_for` picks one by its
`--executor` name and imports Ray only when asked."""

from __future__ import annotations

from ..framework import Executor


def executor_for(name: str, **options) -> Executor:
    """The executor called `name` (`--executor`): "local", or "ray" (imported only when asked)."""
    from ...errors import NextlongError, UsageError

    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor(threads=options.get("threads"))
    if name == "ray":
        try:
            from .ray import RayExecutor
        except ImportError as exc:
            raise NextlongError(f"the ray executor needs Ray and nextlong's Ray executor ({exc}): "
                                "pip install 'nextlong[ray]'") from exc
        return RayExecutor(**options)
    raise UsageError(f"--executor must be local or ray, got {name!r}")
