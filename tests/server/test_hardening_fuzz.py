"""Property-based fuzzing (hypothesis): the request models answer any JSON with a parsed body or a
structured 400, and whatever is posted to the JSON routes of a real server, it never answers 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genloom.server import schemas
from genloom.server.errors import BadRequest, dumps
from server_support import module_server, prompt

srv = module_server("hardening_fuzz")

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(alphabet=st.characters(codec=None), max_size=12))  # lone surrogates included
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)

BODIES = [schemas.PromptBody, schemas.ClearOrDelete, schemas.InterruptBody, schemas.FreeBody,
          schemas.CancelJobsBody, schemas.LogsSubscribeBody, schemas.SettingsBody, schemas.UploadForm]
QUERIES = [schemas.HistoryQuery, schemas.JobsQuery, schemas.ViewQuery]
FIELDS = sorted({name for model in BODIES + QUERIES for name in getattr(model, "model_fields", {})} | {"prompt"})


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _refusal_is_structured(exc: BadRequest) -> None:
    assert exc.status == 400
    error = _strict(dumps(exc.body))["error"]
    assert error["type"] and error["message"]


body_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5) | json_values


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(BODIES), data=body_like)
def test_request_bodies_parse_or_refuse_with_a_400(model, data):
    try:
        schemas.parse(model, data)
    except BadRequest as exc:
        _refusal_is_structured(exc)


class _Query(dict):
    def keys(self):
        return list(super().keys())


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(QUERIES),
       data=st.dictionaries(st.sampled_from(FIELDS), st.text(alphabet=st.characters(codec=None), max_size=30)
                            | st.integers(min_value=-2**80, max_value=2**80).map(str), max_size=5))
def test_queries_parse_or_refuse_with_a_400(model, data):
    try:
        schemas.parse_query(model, _Query(data))
    except BadRequest as exc:
        _refusal_is_structured(exc)


ROUTES = ["/prompt", "/queue", "/history", "/interrupt", "/free", "/jobs/cancel", "/settings",
          "/settings/some.setting"]
texts = st.text(alphabet=st.characters(codec=None), max_size=10)


def _prompt_like(values):
    node = st.fixed_dictionaries({"class_type": st.sampled_from(["TestSleep", "TestSaveColor", "TestFail", "Nope"])
                                  | texts,
                                  "inputs": st.dictionaries(st.sampled_from(["value", "steps", "delay", "prefix"])
                                                            | texts, values | st.tuples(texts, st.integers())
                                                            .map(list), max_size=4)})
    return st.dictionaries(st.sampled_from(["1", "2", "3"]) | texts, node | values, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES),
       body=st.fixed_dictionaries({"prompt": _prompt_like(json_values)},
                                  optional={k: json_values for k in ("client_id", "prompt_id", "front",
                                                                     "partial_execution_targets", "delete")})
       | body_like)
def test_posting_anything_never_answers_500(srv, route, body):
    raw = json.dumps(body).encode()  # NaN and Infinity as Python writes them, lone surrogates escaped
    status, answer = srv.http.post(route, raw, headers={"Content-Type": "application/json"})
    assert status < 500, (route, body, answer)
    if status >= 400:
        assert isinstance(answer, dict) and answer["error"]["type"], answer
    srv.http.post("/queue", {"clear": True})


def test_a_valid_prompt_still_runs(srv):
    assert srv.http.wait_history(srv.http.submit(prompt(prefix="fuzz")))["status"]["completed"]
