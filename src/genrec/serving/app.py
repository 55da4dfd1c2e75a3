"""The HTTP API (FastAPI): the contract of DESIGN.md §7. Every bad input is a clear 4xx."""

from __future__ import annotations

import hmac
import math
import time
from typing import Annotated, Union

from fastapi import FastAPI, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator
from starlette.requests import Request as StarletteRequest

from genrec.serving.engine import DeadlineExceeded, EngineStopped, Overloaded
from genrec.serving.service import RecommendService

ItemId = Annotated[Union[StrictStr, StrictInt], Field(description="an item id of the catalog")]
MAX_LIST = 1000


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_LIST, description="never recommend these")
    include_only: list[ItemId] | None = Field(None, max_length=100_000, description="recommend only among these")


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Union[StrictStr, StrictInt, None] = Field(None, description="a user of the dataset or of posted events")
    history: list[ItemId] | None = Field(None, max_length=MAX_LIST, description="item ids, oldest first")
    k: int = Field(10, ge=1, le=1000)
    exclude_history: bool = True
    filters: Filters | None = None
    deadline_ms: float | None = Field(None, gt=0, le=60_000, description="default: the server's --deadline-ms")

    @model_validator(mode="after")
    def one_source(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    semantic_id: str | None
    title: str


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    unknown_items: list[str]
    fallback: bool = Field(description="true when the history was empty and popularity answered")
    latency_ms: float


class EventsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Union[StrictStr, StrictInt]
    item_ids: list[ItemId] = Field(min_length=1, max_length=MAX_LIST, description="oldest first")
    timestamp: float | None = Field(None, description="seconds since the epoch; default now")


class EventsResponse(BaseModel):
    accepted: int
    unknown_items: list[str]


def _error(status: int, message: str | list, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _overloaded(service: RecommendService, refusal: Overloaded, reason: str = "overloaded") -> JSONResponse:
    """429 with Retry-After, counted under `reason` (the engine's admission, or the HTTP layer's own)."""
    service.metrics.rejected.labels(reason).inc()
    return _error(429, str(refusal), {"Retry-After": str(int(math.ceil(refusal.retry_after_s)))})


def _invalid(errors, where: tuple = ()) -> JSONResponse:
    """422: where and what for each error, without echoing the input (it may be huge or hold
    non-JSON floats)."""
    return _error(422, [{"loc": [*where, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors])


async def answer_recommend(service: RecommendService, body: RecommendBody, arrived: float | None) -> Response:
    """The answer to a validated recommend body: 200 with its JSON, or 429/503 with Retry-After."""
    # Refused before its history is read, and by its own deadline: a body may ask for a longer
    # one than the server's default (shedding before the body was parsed used the default, and
    # refused requests that would have been answered in the time they asked for).
    if (refusal := service.engine.overloaded_for(body.deadline_ms)) is not None:
        return _overloaded(service, refusal)
    filters = body.filters or Filters()
    request, unknown = service.build_request(None if body.user_id is None else str(body.user_id), body.history,
                                              body.k, body.exclude_history, filters.exclude, filters.include_only)
    try:
        result = await service.recommend(request, unknown, body.deadline_ms, arrived)
    except Overloaded as exc:
        return _overloaded(service, exc)
    except DeadlineExceeded as exc:
        service.metrics.rejected.labels("deadline").inc()
        return _error(503, str(exc), {"Retry-After": "1"})
    except EngineStopped as exc:
        return _error(503, str(exc), {"Retry-After": "5"})
    return Response(RecommendResponse.model_validate(result.__dict__).model_dump_json(), media_type="application/json")


class Front:
    """The ASGI app uvicorn runs, in front of the FastAPI app: requests in flight, body size
    limit, optional API key on /v1/*, request counting and the event-loop-lag shedding, before
    any parsing; then `POST /v1/recommend` itself, and everything else through FastAPI.

    The hot path skips FastAPI's layers (five middlewares, routing, dependency solving, response
    validation): they were a third of the server process's CPU under load (py-spy); without them
    1.02 -> 0.61 ms per answer (medians, side by side), and that CPU is what one event loop's
    throughput is made of. The FastAPI route stays for /docs and the OpenAPI schema and answers
    through the same `answer_recommend`."""

    def __init__(self, service: RecommendService, api: FastAPI):
        self.service, self.api = service, api
        self.max_body, self.api_key = service.config.max_body_bytes, service.config.api_key
        # Past this many requests in the server at once (being read, queued or answered) a request
        # is refused at once, with Retry-After (uvicorn's own cap, off in server.py, gave a bare 503).
        self.max_in_flight = service.config.max_in_flight
        self.loop_lag, self.max_loop_lag_s = service.loop_lag, service.config.max_loop_lag_ms / 1000

    def _endpoint(self, path: str) -> str:
        if path.startswith("/v1/items/"):
            return "/v1/items"
        return path if path in ("/v1/recommend", "/v1/events", "/healthz", "/metrics") else "other"

    def _authorised(self, headers: dict) -> bool:
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
        return hmac.compare_digest(given, self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":   # lifespan
            return await self.api(scope, receive, send)
        scope["genrec_arrived"] = time.monotonic()   # request deadlines count from here
        counted = False
        service = self.service

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            service.metrics.requests.labels(self._endpoint(scope["path"]), str(status)).inc()

        async def counting_send(message):
            # Counted before it leaves: a client that has its answer finds it in /metrics.
            if message["type"] == "http.response.start":
                count(message["status"])
            await send(message)

        self.loop_lag.start()
        service.in_flight += 1   # one event loop: no lock needed
        try:
            if service.in_flight > self.max_in_flight and scope["path"] not in ("/healthz", "/metrics"):
                refusal = Overloaded(f"the server holds {self.max_in_flight} requests already; retry later", 1)
                await _overloaded(service, refusal, "in_flight")(scope, receive, counting_send)
            else:
                await self._handle(scope, receive, counting_send)
        finally:
            service.in_flight -= 1
            if not counted:   # it failed before answering: uvicorn sends a 500
                count(500)

    async def _handle(self, scope, receive, send):
        headers = dict(scope["headers"])
        if self.api_key and scope["path"].startswith("/v1/") and not self._authorised(headers):
            return await _error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")(
                scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send)
        if scope["path"] == "/v1/recommend" and scope["method"] == "POST":
            # Shed load before parsing the body: under overload the event loop's time goes to
            # refusals, and a cheap one keeps admitted requests' time in the server short.
            if self.max_loop_lag_s and (lag := self.loop_lag.seconds()) > self.max_loop_lag_s:   # loop_lag.py
                refusal = Overloaded(f"the server's event loop runs {lag * 1000:.0f} ms late; retry later", 1)
                return await _overloaded(self.service, refusal, "event_loop_lag")(scope, receive, send)
            app = self._recommend
        else:
            app = self.api
            if scope["method"] == "POST" and not headers.get(b"content-type", b"").startswith(b"application/json"):
                # Bodies are always JSON here: accept them without the header (curl -d sends a form type).
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                         + [(b"content-type", b"application/json")]}
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send)

    async def _recommend(self, scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = RecommendBody.model_validate_json(b"".join(chunks))
        except ValidationError as exc:
            response = _invalid(exc.errors(), ("body",))
        else:
            response = await answer_recommend(self.service, body, scope["genrec_arrived"])
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(service: RecommendService) -> Front:
    """The ASGI app to serve: `Front` around the FastAPI app (its `.api`)."""
    app = FastAPI(title="genrec", version="0.1.0",
                  description="Generative recommendation: trie-constrained beam search over semantic IDs, "
                              "batched by an in-process engine.")

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        return _invalid(exc.errors())

    @app.post("/v1/recommend", response_model=RecommendResponse,
              responses={429: {"description": "overloaded; retry after Retry-After seconds"},
                         503: {"description": "deadline passed in the queue, or shutting down"}})
    async def recommend(body: RecommendBody, http: StarletteRequest):
        return await answer_recommend(service, body, http.scope.get("genrec_arrived"))

    @app.post("/v1/events", response_model=EventsResponse)
    async def events(body: EventsBody):
        accepted, unknown = service.add_events(str(body.user_id), body.item_ids, body.timestamp)
        return {"accepted": accepted, "unknown_items": unknown}

    @app.get("/v1/items/{item_id}")
    async def item(item_id: Annotated[str, Path(max_length=200)]):
        idx = service.item_index.get(item_id)
        if idx is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return service.describe(idx)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": service.loaded.kind, "items": len(service.item_ids),
                "queue_depth": service.engine.queue_depth(), "max_batch": service.config.engine.max_batch}

    @app.get("/metrics")
    async def metrics():
        service.publish_gauges()
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Front(service, app)


__all__ = ["create_app", "RecommendBody", "EventsBody"]
