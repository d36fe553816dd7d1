"""fal result processing: the result dict as one raw ``Delta`` (``process_result``:
output, finish reason, usage, metadata with the fal request id, timings, diffusion usage,
estimated cost), stop sequences applied to the answer (``cut_at_stop``), and a whole
reply as the one delta of a stream (``reply_as_delta``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from nemovlm.errors import IncompleteResponseError
from nemovlm.messages import Delta, Reply, Usage
from nemovlm.profiles import ModelProfile

_TOKEN_KEYS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens"}
)


def process_result(
    result: Any, profile: ModelProfile, request_id: str | None, arguments: Mapping[str, Any]
) -> Delta:
    model = profile.model
    if not isinstance(result, dict) or not isinstance(result.get("output"), str):
        raise IncompleteResponseError(
            f"fal's result for {model} has no text 'output' (request id {request_id}); "
            "nothing to return."
        )
    raw_usage: dict[str, Any] = result["usage"] if isinstance(result.get("usage"), dict) else {}
    usage = _process_usage(raw_usage) if raw_usage else None
    metadata: dict[str, Any] = {"fal_request_id": request_id}
    if isinstance(result.get("timings"), dict):
        metadata["timings"] = result["timings"]
    diffusion = {k: v for k, v in raw_usage.items() if k not in _TOKEN_KEYS}
    if diffusion:
        metadata["diffusion_usage"] = diffusion
    if usage is not None and profile.price_per_1k_tokens is not None:
        metadata["estimated_cost_usd"] = round(
            usage.total_tokens / 1000 * profile.price_per_1k_tokens, 8
        )
    return Delta(
        text=result["output"],
        finish_reason=_process_finish_reason(result, usage, arguments),
        usage=usage,
        model=model,
        response_id=request_id,
        metadata=metadata,
    )


def _process_usage(raw: Mapping[str, Any]) -> Usage:
    # Omni says input/output_tokens; the diffusion app prompt/completion_tokens.
    inputs = _count(raw.get("input_tokens", raw.get("prompt_tokens", 0)))
    outputs = _count(raw.get("output_tokens", raw.get("completion_tokens", 0)))
    total = _count(raw.get("total_tokens", 0)) or inputs + outputs
    return Usage(inputs, outputs, total)


def _count(value: Any) -> int:
    # Token counts are metadata: an odd one is dropped rather than costing the answer.
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _process_finish_reason(
    result: Mapping[str, Any], usage: Usage | None, arguments: Mapping[str, Any]
) -> str:
    reason = result.get("finish_reason")
    if isinstance(reason, str) and reason:
        return reason
    # Apps without the field (the diffusion VLM): inferred from the token budget.
    limit = arguments.get("max_tokens")
    if usage is not None and isinstance(limit, int) and usage.output_tokens >= limit:
        return "length"
    return "stop"


def cut_at_stop(reply: Reply, stop: Sequence[str]) -> Reply:
    """fal apps take no stop sequences, so they are applied to the answer here."""
    cut = min((i for s in stop if s and (i := reply.text.find(s)) >= 0), default=-1)
    if cut < 0:
        return reply
    return replace(reply, text=reply.text[:cut], finish_reason="stop")


def reply_as_delta(reply: Reply) -> Delta:
    return Delta(
        text=reply.text,
        reasoning=reply.reasoning or "",
        tool_calls=list(reply.tool_calls),
        invalid_tool_calls=list(reply.invalid_tool_calls),
        finish_reason=reply.finish_reason,
        usage=reply.usage,
        model=reply.model,
        response_id=reply.response_id,
        metadata=dict(reply.metadata),
    )
