"""The per-client policy: the models a client may call, its rate and concurrency limits, its budgets.

    admit   the model is one of the client's (else PERMISSION_DENIED MODEL_NOT_ALLOWED); then the store
            takes a request, the call's estimated tokens and a concurrency slot, with room in the budgets
            (else RESOURCE_EXHAUSTED QUOTA_EXCEEDED or BUDGET_EXCEEDED, QuotaFailure and RetryInfo); the
            call's trailers get what is left (policy/headers.py)
    shows   ListModels lists a client only the models it may call
    settle  the tokens are corrected by the usage reported, the cost is charged to the budgets, the slot
            is given back

CountTokens calls count as requests and spend no tokens; Embed calls are charged their texts as a prompt.
Tokens are estimated before the call as a quarter of the characters of the messages (about four per
token in English) plus the request's max_tokens when it sets one; after the call the reported usage
replaces the estimate. A call with no reported usage (a cancelled stream) is charged the estimated prompt
and one token per delta relayed, and the cost of those at the model's price: cancelling a stream does not
make it free. A client that is not configured (only without auth: `anonymous`) gets `client_defaults`.

Nothing here runs per token: admit and settle run once per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from server.config import ClientLimits, GatewayConfig
from server.embedding import estimate_tokens
from server.errors import BudgetExceeded, ModelNotAllowed, QuotaExceeded
from server.observe.record import MAX_LOGGED_CHARS
from server.policy.allowed import AllowedModels
from server.policy.headers import rate_limits_left
from server.policy.seam import CallContext
from server.policy.store import Ask, MemoryQuotaStore, QuotaStore, Refused
from server.routing.catalog import Catalog, ModelConfig, cost_of
from server.types import ChatRequest, Usage

__all__ = ["ANONYMOUS", "ClientPolicy", "ClientRules", "estimate_prompt_tokens"]

ANONYMOUS = "anonymous"  # the one client of a gateway without auth


class ClientRules:
    """What one client may do: its models and its limits, defaults filled in."""

    __slots__ = ("limited", "limits", "models")

    def __init__(self, models: AllowedModels, limits: ClientLimits) -> None:
        self.models = models
        self.limits = limits
        self.limited = limits != ClientLimits()  # without limits, the store is never asked


@dataclass(slots=True)
class _Ticket:
    ask: Ask
    model: ModelConfig
    prompt_tokens: int


class ClientPolicy:
    """A Policy (server/policy/seam.py) for every client of the config."""

    def __init__(self, rules: Mapping[str, ClientRules], default: ClientRules, store: QuotaStore) -> None:
        self._rules = dict(rules)
        self._default = default
        self.store = store
        self._tickets: dict[int, _Ticket] = {}  # by id() of the calls admitted and not yet settled

    @classmethod
    def from_config(cls, config: GatewayConfig, catalog: Catalog, store: QuotaStore | None = None) -> ClientPolicy:
        defaults = config.client_defaults
        default = ClientRules(AllowedModels(defaults.models, catalog), defaults.limits)
        rules = {
            client.name: ClientRules(
                AllowedModels(client.models if client.models is not None else defaults.models, catalog),
                client.limits.over(defaults.limits),
            )
            for client in config.clients
        }
        return cls(rules, default, store or MemoryQuotaStore())

    async def admit(self, call: CallContext, model: ModelConfig, request: ChatRequest) -> None:
        name = call.record.client or ANONYMOUS
        rules = self._rules.get(name, self._default)
        if not rules.models.allows(model):
            raise ModelNotAllowed(name, call.record.model[:MAX_LOGGED_CHARS])
        if not rules.limited:
            return
        limits = rules.limits
        prompt = estimate_prompt_tokens(request)  # an Embed call's texts are its prompt (EmbedRequest.as_chat)
        if call.record.method == "CountTokens":  # a request, but no tokens: not even a token debt holds it back
            limits, prompt = replace(limits, tokens_per_minute=None), 0
        tokens = prompt + (request.params.max_tokens or 0) if limits.tokens_per_minute is not None else 0
        ask = Ask(name, limits, tokens)
        outcome = await self.store.admit(ask)
        if isinstance(outcome, Refused):
            raise _refusal(name, ask, outcome)
        self._tickets[id(call)] = _Ticket(ask, model, prompt)
        call.rate_limits = rate_limits_left(limits, outcome)
        if call.rate_limits is not None:
            call.trailers = call.rate_limits.trailers()

    def shows(self, client: str | None, model: ModelConfig) -> bool:
        """Whether ListModels shows `client` the model: only the models it may call."""
        return self._rules.get(client or ANONYMOUS, self._default).models.allows(model)

    def settle(self, call: CallContext) -> None:
        ticket = self._tickets.pop(id(call), None)
        if ticket is None:
            return
        record = call.record
        usage, cost = record.usage, record.cost_usd
        if usage is None:
            usage = Usage(ticket.prompt_tokens, record.deltas, ticket.prompt_tokens + record.deltas, estimated=True)
            if cost is None and record.deltas:
                cost = cost_of(ticket.model, ticket.model.all_deployments[0], usage)
        self.store.settle(ticket.ask, tokens_used=usage.total_tokens, cost_usd=cost or 0.0)


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """About how many tokens the request's messages are: a quarter of their characters, at least 1."""
    return estimate_tokens(message.content for message in request.messages)


_WHAT = {
    "requests_per_minute": "requests per minute",
    "tokens_per_minute": "tokens per minute",
    "concurrent_streams": "calls in flight",
}


def _refusal(client: str, ask: Ask, refused: Refused) -> QuotaExceeded:
    subject = f"client:{client}"
    limit, value, wait = refused.limit, refused.value, refused.retry_after_s
    if limit.startswith("budget_usd_per_"):
        period = "today (UTC)" if limit.endswith("day") else "this month (UTC)"
        return BudgetExceeded(
            f"client {client!r} has spent its budget of {value:g} USD for {period}; it resets in {wait:.0f} s",
            limit=limit,
            subject=subject,
            quota_value=value,
            retry_after_s=wait,
        )
    detail = f" (this call is estimated at {ask.tokens} tokens)" if limit == "tokens_per_minute" else ""
    return QuotaExceeded(
        f"client {client!r} is over its limit of {value:g} {_WHAT[limit]}{detail}; retry in {wait:.1f} s",
        limit=limit,
        subject=subject,
        quota_value=value,
        retry_after_s=wait,
    )
