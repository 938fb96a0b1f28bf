"""A bounded Schemathesis run against `/openapi.json`: the document and the server agree.

In-process (ASGI, the tiny model on CPU, no Ray), each operation a bounded number of cases, so the
whole run stays well under two minutes. All of Schemathesis's response checks run, except (each
turned off on purpose):
- `positive_data_acceptance`: the schema accepts, as OpenAI's API does, fields this service refuses
  by design with a 422 naming them (`background: transparent`, `frame_count`, `svg`, `output_format:
  gif`, `input_reference`), and rules across fields that JSON Schema here does not state (`frames`
  with `seconds`, `stream` with `n` > 1, seconds * fps within the model's frames, and, as two models
  are served, a size or frame count of their union that only the other model allows). Each of those
  422s is asserted in test_serving_api.py / test_serving_openai_shapes.py / test_serving_models.py.
- `use_after_free`, `ensure_resource_availability`: stateful checks that need links between
  operations, which this document does not declare.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import CHECKS  # noqa: E402
from schemathesis.specs.openapi import checks as _openapi_checks  # noqa: E402,F401  (registers the checks)

from omnidit.serving.api import create_app  # noqa: E402
from omnidit.serving.engine import GeneratorEngine  # noqa: E402
from omnidit.serving.service import LocalGeneratorClient, Service  # noqa: E402
from omnidit.serving.settings import ServeSettings  # noqa: E402
from tiny_models import make_tiny_model_dir  # noqa: E402

pytestmark = pytest.mark.timeout(180)
EXCLUDED = {"positive_data_acceptance", "use_after_free", "ensure_resource_availability"}
CASES_PER_OPERATION = 30  # x 11 operations: a few hundred cases


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    # Two models, the second with other defaults and limits (no larger images: each case stays quick); the
    # document enumerates both (model, the union of their sizes and frames).
    models = [make_tiny_model_dir(root / "tiny"),
              make_tiny_model_dir(root / "tiny-short", sampling={"width": 48, "max_frames": 9})]
    # Small caps so any accepted request is quick: at most 2 images at 3 steps; jobs stay queued.
    s = ServeSettings(model=[str(m) for m in models], data_dir=str(tmp_path_factory.mktemp("data")), device="cpu",
                      max_images=2, max_batch_images=2, max_steps=3, max_queued_jobs=8, run_jobs=False)
    engines = [GeneratorEngine(s.for_model(m)) for m in s.models]
    service = Service(s, [LocalGeneratorClient(e) for e in engines], start_sweeper=False)
    yield create_app(service)
    for e in engines:
        e.close()
    service.close()


def test_api_conforms_to_its_openapi_document(app):
    # (schemathesis.pytest.from_fixture does not run under pytest 9: the operations are driven here.)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [c for c in CHECKS.get_all() if c.__name__ not in EXCLUDED]
    names = {c.__name__ for c in checks}
    assert {"not_a_server_error", "status_code_conformance", "content_type_conformance",
            "response_schema_conformance", "response_headers_conformance", "negative_data_rejection"} <= names
    operations, failures, cases = [], {}, [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def run(case):
            cases[0] += 1
            case.call_and_validate(checks=checks)

        try:
            run()
        except Exception as e:  # every operation runs; all failures are reported together
            failures[operation.label] = f"{type(e).__name__}: {e}"[:3000]
    assert len(operations) >= 11 and "POST /v1/videos" in operations and "GET /metrics" in operations
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    print(f"schemathesis: {cases[0]} cases over {len(operations)} operations")
    assert cases[0] >= 200, cases[0]
