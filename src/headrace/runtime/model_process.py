"""The process a model runs in under ``batching.model_calls: process`` (started by
:class:`headrace.runtime.processes.ProcessPool`): ``python -m headrace.runtime.model_process
FD``, speaking pickled tuples over the connected socket ``FD``.

Messages in: ``("path", sys_path)`` first (so the models' modules import as in the worker),
``("model", token, pickled)``, ``("forget", token)``, ``("call", id, token, inputs)``.
Messages out: ``("ready",)`` once, ``("loaded", token)`` for each model (loaded, or kept
as the error that calls with it then raise), ``("done", id, outputs)`` or ``("error", id,
exc)`` for each call, one call at a time.

It leaves when the worker closes the connection, or (a call that never returns does not
read it) when the worker is gone: a watchdog thread checks the parent every half second.
SIGINT and SIGTERM are ignored, since a Ctrl-C or a SIGTERM to the whole process group
must not end a model call the worker is still waiting for in its graceful stop; SIGUSR1
prints the threads' stacks, as in the worker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from headrace.errors import HeadraceError


class ModelNotLoaded(HeadraceError, RuntimeError):
    """The model could not be unpickled in its process."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)  # the worker is gone (SIGKILL): nobody will read our answers


def _error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (its type tells the worker what failed), else a
    RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def serve(conn: Connection, parent: int) -> None:
    """Answer calls on ``conn`` until it closes."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    models: dict[int, Any] = {}
    kind, path = conn.recv()
    if kind == "path":
        sys.path[:] = path
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind = msg[0]
        if kind == "call":
            _, call, token, inputs = msg
            model = models.get(token)
            try:
                if isinstance(model, ModelNotLoaded) or model is None:
                    raise model or ModelNotLoaded(f"no model {token} in this process")
                reply: tuple[Any, ...] = ("done", call, model.predict_batch(inputs))
            except BaseException as exc:
                reply = ("error", call, _error(exc))
            try:
                conn.send(reply)  # pickled whole before anything is written
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                error = RuntimeError(f"the model's outputs cannot be sent back: {exc}")
                conn.send(("error", call, error))
        elif kind == "model":
            _, token, pickled = msg
            try:
                models[token] = pickle.loads(pickled)
            except Exception as exc:
                models[token] = ModelNotLoaded(
                    f"the model could not be loaded in its process: {type(exc).__name__}: {exc}"
                )
            conn.send(("loaded", token))
        elif kind == "forget":
            models.pop(msg[1], None)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    conn = Connection(int(sys.argv[1]))
    # The worker closed its end (it stopped, or gave up on this process): nothing to say.
    with contextlib.suppress(EOFError, OSError):
        serve(conn, int(sys.argv[2]))


if __name__ == "__main__":
    main()
