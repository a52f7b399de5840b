"""The actrec tab in TensorBoard: a dynamic plugin (``tensorboard_plugins`` entry point) serving the run's store.

TensorBoard loads the tab's ES module (``static/index.js``) in an iframe whose base URL is this
plugin's route prefix (``/data/plugin/actrec/``); the module asks the routes below for JSON and PNGs.
Every route reads on demand: opening the page reads the layer list, a few sampled rows per layer for
its colour scale, and the step column; a frame is one row of one layer, cached.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, cast

from tensorboard.plugins import base_plugin
from werkzeug import Request, Response

from actrec.dashboard._source import DashboardError, FrameCache, RunSource, find_runs, runs_of_spec
from actrec.errors import UserError

PLUGIN_NAME = "actrec"
_STATIC = {"index.js": "text/javascript", "dashboard.css": "text/css"}

# werkzeug's Request.application wraps methods too (it builds the request from the last two WSGI arguments),
# but its annotation admits only plain functions of a request.
_route = cast("Callable[[Callable[[Any, Request], Response]], Callable[..., Iterable[bytes]]]", Request.application)


class ActrecPlugin(base_plugin.TBPlugin):
    """Every layer of an actrec run on one step slider, read straight from its activation store.

    Args:
        context: TensorBoard's :class:`~tensorboard.plugins.base_plugin.TBContext` (its ``logdir`` is searched
            for ``activations.h5`` files).
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._logdir = Path(context.logdir) if context.logdir else None
        flags = context.flags
        self._logdir_spec = "" if self._logdir is not None or flags is None else getattr(flags, "logdir_spec", "") or ""
        self._sources: dict[str, RunSource] = {}
        self._lock = threading.Lock()
        self._frames = FrameCache()

    # -- TBPlugin --------------------------------------------------------------------------------

    def is_active(self) -> bool:
        return bool(self._runs())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="actrec", disable_reload=True)

    def get_plugin_apps(self) -> dict[str, Any]:
        return {
            "/index.js": self._serve_static,
            "/dashboard.css": self._serve_static,
            "/runs": self._serve_runs,
            "/run": self._serve_run,
            "/timeline": self._serve_timeline,
            "/poll": self._serve_poll,
            "/step": self._serve_step,
            "/frame": self._serve_frame,
            "/probe": self._serve_probe,
        }

    # -- helpers ---------------------------------------------------------------------------------

    def _runs(self) -> dict[str, Path]:
        if self._logdir is not None:
            return find_runs(self._logdir) if self._logdir.is_dir() else {}
        return runs_of_spec(self._logdir_spec)

    def _source(self, request: Request) -> RunSource:
        name = request.args.get("run", "")
        with self._lock:
            source = self._sources.get(name)
            if source is not None:
                return source
            path = self._runs().get(name)
            if path is None:
                where = self._logdir or self._logdir_spec
                raise DashboardError(f"there is no actrec run named {name!r} under {where}.")
            source = self._sources[name] = RunSource(name, path)
            return source

    @staticmethod
    def _int(request: Request, key: str) -> int:
        text = request.args.get(key, "")
        try:
            return int(text)
        except ValueError:
            raise DashboardError(f"{key} must be a whole number, got {text!r}.") from None

    # -- routes ----------------------------------------------------------------------------------

    @_route
    def _serve_static(self, request: Request) -> Response:
        name = request.path.rsplit("/", 1)[-1]
        data = resources.files("actrec.dashboard").joinpath("static").joinpath(name).read_bytes()
        return Response(data, content_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @_route
    def _serve_runs(self, request: Request) -> Response:
        return _json({"runs": sorted(self._runs())})

    @_route
    def _serve_run(self, request: Request) -> Response:
        return _guarded(lambda: _json(self._source(request).info()))

    @_route
    def _serve_timeline(self, request: Request) -> Response:
        return _guarded(lambda: _json(self._source(request).timeline()))

    @_route
    def _serve_poll(self, request: Request) -> Response:
        return _guarded(lambda: _json({"num_rows": self._source(request).refresh()}))

    @_route
    def _serve_step(self, request: Request) -> Response:
        return _guarded(lambda: _json(self._source(request).step(self._int(request, "row"))))

    @_route
    def _serve_frame(self, request: Request) -> Response:
        def frame() -> Response:
            source = self._source(request)
            layer, row = request.args.get("layer", ""), self._int(request, "row")
            data = self._frames.get((source.name, source.generation, layer, row))
            if data is None:
                generation, data = source.frame_png(layer, row)
                self._frames.put((source.name, generation, layer, row), data)
            return Response(data, content_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

        return _guarded(frame)

    @_route
    def _serve_probe(self, request: Request) -> Response:
        return _guarded(
            lambda: Response(self._source(request).probe_png(self._int(request, "index")), content_type="image/png")
        )


def _json(payload: Any) -> Response:
    return Response(json.dumps(payload, allow_nan=False), content_type="application/json")


def _guarded(action: Any) -> Response:
    """Run a route; a refusal (unknown run, damaged row, ...) is answered with its one sentence, status 400."""
    try:
        return action()
    except UserError as error:
        return Response(json.dumps({"error": str(error)}), status=400, content_type="application/json")
