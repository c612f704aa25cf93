"""Python's cyclic garbage collector paused while the daemon starts, on again once it has.

The start creates some 35,000 long-lived objects (about 400 modules, the
plugins and their services): with the collector on, it ran 74 collections
over them by the first answer, 23 to 35 ms of the start's CPU (load 4,
``gc.callbacks`` timed). :func:`pause` is called first thing by ``moorage
daemon`` (before the daemon's modules are imported) and again by
:func:`runtime.core.daemon.run_daemon`; :func:`resume`, once every plugin has
started, freezes what the start made (:func:`gc.freeze`: moved to a
generation no collection scans, so no later full collection walks it
either) and turns collection on for what requests make. The price: the
start's cyclic garbage (a few hundred objects, mostly classes and functions
that imports build and drop) is never freed; a collection to free it would
cost 15 to 40 ms of CPU just when the first clients are waiting.
"""

from __future__ import annotations

import gc

__all__ = ["pause", "resume"]

_paused = False
_resume = False


def pause() -> None:
    """Stop collecting (once; a collector that was off already stays off after :func:`resume`)."""
    global _paused, _resume
    if _paused:
        return
    _paused, _resume = True, gc.isenabled()
    gc.disable()


def resume() -> None:
    """Freeze what exists and collect again, if :func:`pause` stopped the collector."""
    global _paused, _resume
    if not _paused:
        return
    was_on, _paused, _resume = _resume, False, False
    if was_on:
        gc.freeze()
        gc.enable()
