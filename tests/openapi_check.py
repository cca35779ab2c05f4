"""Validate real responses against dtlab/api/openapi.json (OpenAPI 3.0 schemas checked with jsonschema)."""
import copy

import jsonschema

from dtlab.api.app import openapi_document

DOC = openapi_document()


def _inline(node, doc):
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _inline(copy.deepcopy(target), doc)
        out = {k: _inline(v, doc) for k, v in node.items()}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        out.pop("example", None)
        return out
    if isinstance(node, list):
        return [_inline(v, doc) for v in node]
    return node


def response_schema(path: str, method: str, status: int) -> dict:
    op = DOC["paths"][path][method.lower()]
    responses = op["responses"]
    if str(status) not in responses:
        raise AssertionError(f"{method} {path} returned {status}, which the OpenAPI document does not declare")
    content = responses[str(status)]["content"]
    media = "application/json" if "application/json" in content else next(iter(content))
    return _inline(content[media]["schema"], DOC)


def check(response, path: str, method: str = "GET") -> None:
    """Assert ``response`` (a Flask/requests response) matches the documented schema for its status."""
    schema = response_schema(path, method, response.status_code)
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    # Draft 4 gives OpenAPI 3.0 its boolean exclusiveMinimum semantics.
    jsonschema.Draft4Validator(schema).validate(body)
