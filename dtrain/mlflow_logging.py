"""A training run in MLflow: what :class:`dtrain.callbacks.MLflowLogger` sends, and how.

MLflow is an optional extra (``pip install "dtrain[mlflow]"``: the client-only
``mlflow-skinny``); it is imported when a logger is made, never by ``import dtrain``.

Where code runs: :class:`MLflowRun`'s methods on the thread that runs fit's callbacks (the
caller of ``fit``, also with ``client=``); every call to MLflow on the run's own sender thread,
in order. Training never waits for the tracking server, except at its end, and then
``timeout`` seconds at most: a server that is down or slow costs a warning, not the run. The
first error stops the sending (one warning names the tracking URI and the error); what was
still to send is dropped. An ``http(s)`` server is first asked once, without retries
(``PROBE_TIMEOUT_S``): MLflow's own client retries a refused connection for about four minutes
(measured: 247 s per request against a closed port with MLflow 3.18's defaults).
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._version import __version__

INSTALL_HINT = 'pip install "dtrain[mlflow]"'
PROBE_TIMEOUT_S = 10.0  # the first question to an http(s) tracking server: connect and answer, each
MAX_PARAMS_PER_CALL = 100  # MLflow's limit of parameters in one log_batch
MAX_METRICS_PER_CALL = 1000
MAX_PARAM_LENGTH = 6000  # MLflow's longest parameter value (longer ones are cut, ending in "...")
MAX_KEY_LENGTH = 250
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_./\- ]")  # what MLflow takes in a key, on every platform


def import_mlflow() -> Any:
    """The ``mlflow`` module, or an ImportError that says how to install it."""
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(
            f"MLflow logging needs the MLflow client, which is not installed here: {INSTALL_HINT} "
            f"(the client-only mlflow-skinny; the full mlflow works too). ({exc})"
        ) from exc
    return mlflow


def open_client(tracking_uri: str | None) -> tuple[Any, str]:
    """An ``MlflowClient`` for ``tracking_uri`` (None: MLflow's own choice, ``$MLFLOW_TRACKING_URI``
    or ``mlflow.set_tracking_uri``) and the URI. Opening contacts no server; a URI MLflow
    cannot use here (an unknown scheme, a store that needs packages not installed) is a
    ValueError with MLflow's reason."""
    mlflow = import_mlflow()
    from mlflow.tracking import MlflowClient

    uri = str(tracking_uri) if tracking_uri is not None else mlflow.get_tracking_uri()
    try:
        return MlflowClient(uri), uri
    except Exception as exc:
        raise ValueError(f"MLflow cannot use the tracking URI {uri!r}: {exc}") from None


# -- what is logged ---------------------------------------------------------------------------------


def param_key(key: str) -> str:
    """``key`` as MLflow takes it: characters it refuses become "_", at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", key).strip("/")[:MAX_KEY_LENGTH] or "_"


def param_value(value: Any) -> str:
    """A parameter's text: strings as they are, anything else as JSON (true, null, 0.01, [])."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings and lists as flat parameters: ``{"fit": {"epochs": 5}}`` is
    ``{"fit.epochs": "5"}``, list items are numbered (``model.layers.0.units``)."""
    if isinstance(value, Mapping) and value:
        items: Any = value.items()
    elif isinstance(value, (list, tuple)) and value:
        items = enumerate(value)
    else:
        return {param_key(prefix): param_value(value)} if prefix else {}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _layer_text(entry: Mapping[str, Any]) -> str:
    config = entry.get("config", {})
    shown = [
        "x".join("None" if n is None else str(n) for n in value) if key == "batch_shape" else str(value)
        for key in ("batch_shape", "units", "activation", "rate", "stddev")
        if (value := config.get(key)) is not None
    ]
    return f"{entry.get('class_name')}({', '.join(shown)})"


def fit_params(model: Any, params: Mapping[str, Any]) -> dict[str, str]:
    """The parameters of a fit: its own (epochs, batch_size, steps per epoch, samples, shards,
    seed, workers), the model (name, dtype, device, layers, parameter count) and its compile
    settings (the optimizer with its configuration, the loss, the metrics)."""
    logged: dict[str, Any] = {
        key: params[key]
        for key in ("epochs", "batch_size", "steps", "samples", "shards", "seed", "workers")
        if key in params
    }
    config = model.get_config()
    logged.update(
        {
            "model.name": config.get("name"),
            "model.dtype": config.get("dtype"),
            "model.device": getattr(model, "device", None),
            "model.layers": " > ".join(_layer_text(entry) for entry in config.get("layers", [])),
            "model.params": model.count_params() if getattr(model, "built", False) else None,
        }
    )
    compiled = model.compile_config() or {}
    flat = {key: value for key, value in logged.items() if value is not None}
    flat = {param_key(key): param_value(value) for key, value in flat.items()}
    optimizer = compiled.get("optimizer")
    if isinstance(optimizer, Mapping):
        flat["optimizer"] = param_value(optimizer.get("class_name"))
        flat.update(flatten(optimizer.get("config", {}), "optimizer"))
    if "loss" in compiled:
        flat.update(flatten(compiled["loss"], "loss"))
    names = [
        m.get("config", {}).get("name", m.get("class_name")) if isinstance(m, Mapping) else m
        for m in compiled.get("metrics", [])
    ]
    if names:
        flat["metrics"] = param_value(", ".join(str(name) for name in names))
    return flat


def epoch_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's logs that are numbers, by MLflow-safe names."""
    metrics = {}
    for key, value in logs.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        metrics[param_key(str(key))] = number
    return metrics


# -- the sender thread ------------------------------------------------------------------------------


class _Sender:
    """Calls MLflow, in order, on a daemon thread. After the first error nothing more is sent
    (``error`` holds it); markers (``drained``) still pass, so that waiting for the queue ends."""

    def __init__(self, name: str) -> None:
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[Callable[[], Any], bool] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def put(self, call: Callable[[], Any], always: bool = False) -> None:
        """``always``: called even after an error (to clean up)."""
        self._queue.put((call, always))

    def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything put so far to be sent (or dropped)."""
        done = threading.Event()
        self._queue.put((done.set, True))
        return done.wait(timeout)

    def close(self) -> None:
        """The thread ends once what is queued has been sent (or dropped)."""
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            call, always = item
            if self.error is not None and not always:
                continue
            try:
                call()
            except Exception as exc:  # reported once, by the training thread
                self.error = exc


def _probe(uri: str) -> None:
    """One question to an http(s) tracking server, without retries: raises where nothing
    answers (refused, unreachable, no such host, silent for PROBE_TIMEOUT_S). Any answer counts,
    an error status or a TLS handshake that the real calls' settings may accept."""
    import requests

    try:
        with requests.get(uri, timeout=PROBE_TIMEOUT_S, allow_redirects=False, stream=True):
            pass  # (the answer's body is not read)
    except requests.exceptions.SSLError:
        return
    except requests.exceptions.RequestException as exc:
        raise ConnectionError(f"the tracking server does not answer: {exc}") from None


class MLflowRun:
    """One MLflow run at a time, logged from fit's callbacks (see the module docstring).

    ``start`` begins a run of its own, or logs into the MLflow run active in this thread (``with
    mlflow.start_run():``) where the logger names no other tracking URI, experiment or run name:
    that run is then left to its owner to end. ``warn(message)`` reports problems (once a run)."""

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str | None,
        run_name: str | None,
        *,
        tags: Mapping[str, Any] | None,
        timeout: float,
        warn: Callable[[str], None],
    ) -> None:
        for name, value in (("experiment", experiment), ("run_name", run_name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"MLflowLogger expected {name} to be a non-empty string or None, received {value!r}.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"MLflowLogger expected timeout to be a number of seconds > 0, received {timeout!r}.")
        self.mlflow = import_mlflow()
        self.client, self.tracking_uri = open_client(tracking_uri)
        self.explicit = tracking_uri is not None or experiment is not None or run_name is not None
        self.experiment, self.run_name = experiment, run_name
        self.tags = {param_key(str(k)): str(v) for k, v in (tags or {}).items()}
        self.timeout = float(timeout)
        self.warn = warn
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.owned = False  # a run this logger started (and ends)
        self._sender: _Sender | None = None
        self._warned = False

    # -- the training thread --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._sender is not None

    def start(self, params: Mapping[str, str], texts: Mapping[str, str]) -> None:
        self.end("KILLED")  # (a run left open by a fit that never ended it: not expected)
        self.run_id, self.experiment_id, self._warned = None, None, False
        sender = self._sender = _Sender(f"dtrain-mlflow-{id(self):x}")
        joined = self.mlflow.active_run() if not self.explicit else None
        if joined is not None:
            self.run_id, self.experiment_id, self.owned = joined.info.run_id, joined.info.experiment_id, False
        else:
            self.owned = True
            if self.tracking_uri.startswith(("http://", "https://")):
                sender.put(lambda: _probe(self.tracking_uri))
            sender.put(self._create_run)
        tags = {"dtrain.version": __version__, **self.tags}
        sender.put(lambda: self._log_batch(params=params, tags=tags))
        for name, text in texts.items():
            sender.put(functools.partial(self._log_text, name, text))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._sender is None:
            return
        self.check()
        stamp = int(time.time() * 1000)
        self._sender.put(lambda: self._log_batch(metrics=metrics, step=step, stamp=stamp))

    def log_model(self, model: Any) -> None:
        """``model.save`` (dtrain's model file, with the optimizer's state) into a temporary folder
        now, sent as the artifact ``model/model.safetensors`` (``dtrain.load_model`` reads it)."""
        sender = self._sender
        if sender is None:
            return
        folder = tempfile.mkdtemp(prefix="dtrain-mlflow-")
        try:
            model.save(os.path.join(folder, "model.safetensors"))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def send() -> None:
            try:
                if sender.error is None:
                    self.client.log_artifacts(self.run_id, folder, "model")
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        sender.put(send, always=True)  # (the folder goes, sent or not)

    def end(self, status: str) -> None:
        """End the run with ``status`` (a run this logger started; a joined run is left open),
        waiting ``timeout`` seconds at most for everything to be sent."""
        sender = self._sender
        if sender is None:
            return
        self._sender = None
        if self.owned:
            sender.put(lambda: self.client.set_terminated(self.run_id, status))
        sent = sender.drained(self.timeout)
        sender.close()
        if sender.error is not None:
            self._report(sender.error)
        elif not sent:
            self.warn(
                f"MLflow at {self.tracking_uri} did not take this run's last records within {self.timeout:g} s "
                f"(MLflowLogger(timeout=...)); training goes on, and they are still being sent in the background."
            )

    def check(self) -> None:
        """Warn (once) of the sender's error, if there was one."""
        if self._sender is not None and self._sender.error is not None:
            self._report(self._sender.error)

    def _report(self, error: BaseException) -> None:
        if not self._warned:
            self._warned = True
            self.warn(
                f"MLflow at {self.tracking_uri}: {type(error).__name__}: {error}. Training goes on; nothing more is "
                "logged to MLflow for this run."
            )

    # -- the sender thread ----------------------------------------------------------------------------
    def _create_run(self) -> None:
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=self.run_name)
        self.experiment_id, self.run_id = experiment_id, run.info.run_id

    def _experiment_id(self) -> str:
        """The experiment's id, made if it does not exist: ``experiment``, else MLflow's own choice
        ($MLFLOW_EXPERIMENT_NAME, $MLFLOW_EXPERIMENT_ID), else its Default experiment ("0")."""
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name is None:
            return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # made meanwhile by another run (two jobs in one experiment)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def _log_batch(
        self,
        params: Mapping[str, str] = {},  # noqa: B006  (read only)
        tags: Mapping[str, str] = {},  # noqa: B006
        metrics: Mapping[str, float] = {},  # noqa: B006
        step: int = 0,
        stamp: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        entities: list[Any] = [Param(key, value) for key, value in params.items()]
        entities += [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, len(entities), MAX_PARAMS_PER_CALL):
            part = entities[start : start + MAX_PARAMS_PER_CALL]
            self.client.log_batch(
                self.run_id,
                params=[e for e in part if isinstance(e, Param)],
                tags=[e for e in part if isinstance(e, RunTag)],
                synchronous=True,
            )
        rows = [Metric(key, value, stamp, step) for key, value in metrics.items()]
        for start in range(0, len(rows), MAX_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=rows[start : start + MAX_METRICS_PER_CALL], synchronous=True)
