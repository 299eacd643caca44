"""wordstats: an Ensemble plugin in Python.

A plain gRPC server implementing ensemble.plugin.v1.PluginService (code generated from the same
contracts as the TypeScript services, see scripts/install-python-plugin.mjs) and
grpc.health.v1. At start it registers itself in the registry (RegisterPlugin with its address),
then heart-beats; on SIGTERM or SIGINT it reports NOT_SERVING, deregisters and drains.

Methods (both idempotent, so the workflow engine may retry them):
  stats     {"text": str}                -> words, unique_words, sentences, characters,
                                            reading_time_seconds, top_words [{word, count}]
  keywords  {"text": str, "limit": int}  -> keywords [str]

Environment:
  ENSEMBLE_ADDR     where RegistryService answers: the gateway (default 127.0.0.1:8080) or the
                    registry itself
  ENSEMBLE_TOKEN    the credential sent as "authorization: Bearer ...": an API key with the admin
                    scope (through the gateway) or an admin's access token; required
  PLUGIN_ID         registration id (default "wordstats")
  PLUGIN_LISTEN     host:port to listen on (default 127.0.0.1:50070; port 0 = any free port)
  PLUGIN_ADVERTISE  host:port the engine should call (default: the listen host and bound port)
  PLUGIN_TTL_MS     registration lease; heartbeats every third of it (default 15000)
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402

from ensemble.plugin.v1 import plugin_pb2, plugin_pb2_grpc  # noqa: E402
from ensemble.registry.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402

VERSION = "1.0.0"
PLUGIN_SERVICE = "ensemble.plugin.v1.PluginService"
WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)


def log(level: str, msg: str, **fields: Any) -> None:
    """One JSON line on stderr (never the credential)."""
    line = {"level": level, "time": int(time.time() * 1000), "plugin": "wordstats", "msg": msg}
    line.update(fields)
    print(json.dumps(line), file=sys.stderr, flush=True)


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def top_words(words: list[str], limit: int) -> list[tuple[str, int]]:
    counts = collections.Counter(w for w in words if w not in STOPWORDS and not w.isdigit())
    # Most frequent first; ties in order of first appearance (Counter keeps insertion order).
    return counts.most_common(limit)


def stats(inputs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    text = required_text(inputs)
    words = words_of(text)
    sentences = len(SENTENCE_END.findall(text.strip())) or (1 if words else 0)
    top = top_words(words, 5)
    outputs = {
        "words": len(words),
        "unique_words": len(set(words)),
        "sentences": sentences,
        "characters": len(text),
        "reading_time_seconds": round(len(words) / 200 * 60),
        "top_words": [{"word": w, "count": c} for w, c in top],
    }
    summary = (
        f"words: {len(words)}, unique: {len(set(words))}, sentences: {sentences}; "
        f"top words: {', '.join(f'{w} ({c})' for w, c in top) or 'none'}"
    )
    return outputs, summary


def keywords(inputs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    text = required_text(inputs)
    limit = inputs.get("limit", 5)
    if not isinstance(limit, (int, float)) or limit < 1 or limit > 100 or limit != int(limit):
        raise InvalidInput("limit must be an integer from 1 to 100")
    found = [w for w, _ in top_words(words_of(text), int(limit))]
    return {"keywords": found}, ", ".join(found)


class InvalidInput(Exception):
    pass


def required_text(inputs: dict[str, Any]) -> str:
    text = inputs.get("text")
    if not isinstance(text, str) or text.strip() == "":
        raise InvalidInput('inputs.text must be a non-empty string')
    return text


def param(name: str, kind: int, description: str, required: bool = False) -> plugin_pb2.PluginParam:
    return plugin_pb2.PluginParam(name=name, type=kind, description=description, required=required)


METHODS = {
    "stats": (
        stats,
        plugin_pb2.PluginMethodSpec(
            name="stats",
            description="Counts words, unique words, sentences and characters; the top words.",
            inputs=[param("text", plugin_pb2.PARAM_TYPE_STRING, "the text", True)],
            outputs=[
                param("words", plugin_pb2.PARAM_TYPE_INTEGER, "word count"),
                param("unique_words", plugin_pb2.PARAM_TYPE_INTEGER, "distinct words"),
                param("sentences", plugin_pb2.PARAM_TYPE_INTEGER, "sentence count"),
                param("characters", plugin_pb2.PARAM_TYPE_INTEGER, "characters"),
                param("reading_time_seconds", plugin_pb2.PARAM_TYPE_INTEGER, "at 200 wpm"),
                param("top_words", plugin_pb2.PARAM_TYPE_ARRAY, "[{word, count}], stopwords out"),
            ],
            idempotent=True,
        ),
    ),
    "keywords": (
        keywords,
        plugin_pb2.PluginMethodSpec(
            name="keywords",
            description="The most frequent words that are not stopwords.",
            inputs=[
                param("text", plugin_pb2.PARAM_TYPE_STRING, "the text", True),
                param("limit", plugin_pb2.PARAM_TYPE_INTEGER, "how many (default 5)"),
            ],
            outputs=[param("keywords", plugin_pb2.PARAM_TYPE_ARRAY, "most frequent first")],
            idempotent=True,
        ),
    ),
}


class WordStats(plugin_pb2_grpc.PluginServiceServicer):
    def Describe(self, request, context):  # noqa: N802 (gRPC method names)
        return plugin_pb2.DescribeResponse(
            name="wordstats",
            version=VERSION,
            description="Word statistics and keywords of a text.",
            methods=[spec for _, spec in METHODS.values()],
        )

    def Invoke(self, request, context):  # noqa: N802
        entry = METHODS.get(request.method)
        if entry is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f'unknown method "{request.method}" (offers: {", ".join(METHODS)})',
            )
        inputs = json_format.MessageToDict(request.inputs)
        try:
            outputs, text = entry[0](inputs)
        except InvalidInput as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        log(
            "info",
            "invoked",
            method=request.method,
            tenant_id=request.context.tenant_id,
            run_id=request.context.run_id,
            step_id=request.context.step_id,
            attempt=request.context.attempt,
        )
        response = plugin_pb2.InvokeResponse(text=text)
        response.outputs.update(outputs)
        return response


class Registration:
    """RegisterPlugin, then HeartbeatPlugin every third of the lease; registers again on NOT_FOUND."""

    def __init__(self, registry_addr: str, token: str, plugin: Any, ttl_ms: int) -> None:
        self._channel = grpc.insecure_channel(registry_addr)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._auth = [("authorization", f"Bearer {token}")]
        self._plugin = plugin
        self._interval = max(ttl_ms / 3000, 0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Registers (waiting for a registry that is not up yet), then starts heart-beating."""
        delay = 0.5
        while True:
            try:
                self._register()
                break
            except grpc.RpcError as err:
                transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if err.code() not in transient or self._stop.is_set():
                    raise
                log("warn", "registry unavailable; retrying", retry_in_s=delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
        self._thread.start()

    def _register(self) -> None:
        res = self._stub.RegisterPlugin(
            registry_pb2.RegisterPluginRequest(plugin=self._plugin),
            metadata=self._auth,
            timeout=10,
        )
        log("info", "registered", id=res.plugin.id, address=res.plugin.address,
            tenant_id=res.plugin.tenant_id, ttl_ms=res.plugin.ttl_ms)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._stub.HeartbeatPlugin(
                    registry_pb2.HeartbeatPluginRequest(id=self._plugin.id),
                    metadata=self._auth,
                    timeout=5,
                )
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    log("warn", "registration expired or removed; registering again")
                    try:
                        self._register()
                    except grpc.RpcError as again:
                        log("warn", "register failed", code=again.code().name,
                            message=again.details())
                else:
                    log("warn", "heartbeat failed", code=err.code().name, message=err.details())

    def interrupt(self) -> None:
        """Stops registering and heart-beating (from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._stub.DeregisterPlugin(
                registry_pb2.DeregisterPluginRequest(id=self._plugin.id),
                metadata=self._auth,
                timeout=5,
            )
            log("info", "deregistered", id=self._plugin.id)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                log("warn", "deregister failed", code=err.code().name, message=err.details())
        self._channel.close()


def main() -> int:
    token = os.environ.get("ENSEMBLE_TOKEN", "")
    if token == "":
        log("error", "ENSEMBLE_TOKEN is required: an admin API key (through the gateway) "
            "or an admin access token of the tenant the plugin serves")
        return 2
    registry_addr = os.environ.get("ENSEMBLE_ADDR", "127.0.0.1:8080")
    plugin_id = os.environ.get("PLUGIN_ID", "wordstats")
    listen = os.environ.get("PLUGIN_LISTEN", "127.0.0.1:50070")
    ttl_ms = int(os.environ.get("PLUGIN_TTL_MS", "15000"))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    plugin_pb2_grpc.add_PluginServiceServicer_to_server(WordStats(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        log("error", "cannot listen", listen=listen)
        return 1
    server.start()
    for name in ("", PLUGIN_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = listen.rsplit(":", 1)[0]
    advertise = os.environ.get("PLUGIN_ADVERTISE", f"{host}:{port}")
    log("info", f"wordstats listening on {host}:{port}", advertise=advertise)

    registration = Registration(
        registry_addr,
        token,
        registry_pb2.PluginRegistration(
            id=plugin_id,
            name="Word statistics",
            description="Word statistics and keywords of a text (Python example plugin).",
            address=advertise,
            version=VERSION,
            methods=list(METHODS),
            ttl_ms=ttl_ms,
            metadata={"language": "python"},
        ),
        ttl_ms,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log("info", "stopping", signal=signal.Signals(signum).name)
        stopping.set()
        registration.interrupt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        registration.start()
    except grpc.RpcError as err:
        if not stopping.is_set():
            log("error", "register failed", code=err.code().name, message=err.details())
            server.stop(0)
            return 1
    while not stopping.wait(0.5):
        pass
    # No new work is routed here once the registration is gone; calls in flight get 5 s.
    health_servicer.enter_graceful_shutdown()
    registration.stop()
    server.stop(grace=5).wait()
    log("info", "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
