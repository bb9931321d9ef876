"""The shipped PACT v3 OpenAPI document and validation against its schemas.

The document (``spec/v3/openapi.yaml``, an unaltered copy) is loaded once. Its
``components.schemas`` are JSON Schema 2020-12 (OpenAPI 3.1), so each schema is
checked with ``jsonschema`` inside a registry holding the whole document, and
``$ref``s resolve as written. Formats the document invents (``decimal``,
``urn``) are left to the patterns beside them.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from compute.errors import ComputeError

__all__ = ["PACT_SPEC_VERSION", "PactSchemaError", "openapi", "schema_problems",
           "validate_footprint"]

DOC_URI = "urn:plantprint:pact:v3:openapi"
PACT_SPEC_VERSION = "3.0.3"  # info.version of the shipped document; ProductFootprint.specVersion


class PactSchemaError(ComputeError):
    """An export that the shipped ProductFootprint schema refuses (a bug: never sent)."""


@cache
def openapi() -> dict[str, Any]:
    """The shipped v3 OpenAPI document as parsed YAML."""
    text = resources.files("compute.pact").joinpath("spec/v3/openapi.yaml").read_text("utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@cache
def _validator(name: str) -> Draft202012Validator:
    doc = openapi()
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    schema = {"$ref": f"{DOC_URI}#/components/schemas/{name}"}
    # formats the document relies on (uuid, date-time) checked; its own (decimal, urn)
    # are left to the patterns beside them
    return Draft202012Validator(schema, registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_problems(instance: object, name: str = "ProductFootprint") -> list[str]:
    """Each way ``instance`` breaks ``components.schemas.<name>``, as 'path: message'."""
    out = []
    for err in sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: {err.message}")
    return out


def validate_footprint(pf: dict[str, Any]) -> None:
    """Raise :class:`PactSchemaError` naming every violation of ``ProductFootprint``."""
    problems = schema_problems(pf)
    if problems:
        raise PactSchemaError(f"PACT footprint {pf.get('id')} does not validate against the "
                              f"shipped v3 ProductFootprint schema: {'; '.join(problems)}")
