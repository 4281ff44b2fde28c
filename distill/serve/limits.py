"""The request schema, the limits the server enforces on it, and the per-connection rate limit."""
from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 500


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much a server takes at once (the CLI's --max-* flags)."""

    max_images: int = 16         # images per request (a grid)
    max_message_bytes: int = 4096  # one JSON request, over HTTP or the WebSocket
    max_queue: int = 64          # requests waiting for the model; beyond it: 503 with Retry-After
    rate_per_s: float = 100.0    # requests per second per connection (HTTP: per client address); beyond it: 429
    burst: int = 200


class GenerateRequest(BaseModel):
    """One preview request: images seed, seed+1, ... of one class (or one prompt, for a text-to-image student)."""

    model_config = ConfigDict(extra="forbid")

    id: int | str | None = Field(None, description="echoed in the WebSocket reply, so the page never shows a stale frame")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="the first image's noise seed; image i uses seed + i")
    label: int | None = Field(None, description="class id of a class-conditional student (required there)")
    num_images: int = Field(1, ge=1, description="1, 4, 16 ...: the images come back as one grid")
    prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS, description="text-to-image students only")


class RequestError(ValueError):
    """A request the server refuses: its HTTP status and one line naming the field and what is allowed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


ALLOWED = {"seed": f"0..{SEED_MAX}", "num_images": "1..max_images", "label": "a class id or null",
           "prompt": f"text of at most {PROMPT_MAX_CHARS} characters",
           "id": "an integer or a string"}


def validation_message(err: ValidationError) -> str:
    """pydantic's errors as one line: `field: what is wrong (allowed: ...)` per error."""
    parts = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "request"
        allowed = f" (allowed: {ALLOWED[name]})" if name in ALLOWED else ""
        parts.append(f"{name}: {e['msg']}{allowed}")
    return "; ".join(parts)


def parse_request(raw: bytes | str, limits: Limits) -> GenerateRequest:
    """A request from JSON text, or RequestError (413 too large, 400 not a JSON object, 422 a field out of range)."""
    if len(raw) > limits.max_message_bytes:
        raise RequestError(413, f"message: {len(raw)} bytes; at most {limits.max_message_bytes} allowed")
    try:
        return GenerateRequest.model_validate_json(raw)
    except ValidationError as err:
        malformed = any(e["type"] in ("json_invalid", "model_type") for e in err.errors())
        raise RequestError(400 if malformed else 422, validation_message(err)) from None


def check_request(request: GenerateRequest, limits: Limits, num_classes: int | None, text_to_image: bool = False) -> None:
    """The limits that depend on the served student; RequestError (422) naming the field and the allowed range."""
    if request.num_images > limits.max_images:
        raise RequestError(422, f"num_images: {request.num_images}; allowed 1..{limits.max_images}")
    if request.seed + request.num_images - 1 > SEED_MAX:
        raise RequestError(422, f"seed: {request.seed} + num_images - 1 exceeds {SEED_MAX}; allowed 0..{SEED_MAX - request.num_images + 1}")
    if not text_to_image and request.prompt is not None:
        kind = f"class-conditional (label 0..{num_classes - 1})" if num_classes else "unconditional"
        raise RequestError(422, f"prompt: this student is {kind} and takes no prompt")
    if text_to_image and request.label is not None:
        raise RequestError(422, f"label: {request.label}; this student is text-to-image, send a prompt instead")
    if text_to_image:
        return
    if num_classes is None and request.label is not None:
        raise RequestError(422, f"label: {request.label}; this student is unconditional, send none")
    if num_classes is not None and (request.label is None or not 0 <= request.label < num_classes):
        raise RequestError(422, f"label: {request.label}; allowed 0..{num_classes - 1} (this student is class-conditional)")


class TokenBucket:
    """rate_per_s tokens a second up to burst; take() is False when the client is over its rate (-> 429)."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate_per_s, self.burst, self.clock = rate_per_s, burst, clock
        self.tokens, self.last = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
