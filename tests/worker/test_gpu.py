"""The GPU path (skipped without a CUDA device): the same results on the GPU as on the CPU."""

from __future__ import annotations

import json
import math

import pytest

from inferq.settings import Settings
from inferq.task_specs import TaskName, validate_params
from tests.support.tiny_models import corpus
from worker.model_cache import ModelCache

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_classification_on_cuda_matches_the_cpu(registry_json: str, precision: str) -> None:
    settings = Settings(models=json.loads(registry_json), max_batch_tokens=4096)
    inputs = [{"text": t} for t in corpus()[:500]]
    params = validate_params(TaskName.CLASSIFICATION, {"top_k": None})
    cpu = ModelCache(settings, device="cpu").engine("cls-roberta", TaskName.CLASSIFICATION).run(inputs, params)
    gpu = (
        ModelCache(settings, device="cuda:0", precision=precision)
        .engine("cls-roberta", TaskName.CLASSIFICATION)
        .run(inputs, params)
    )
    tolerance = 1e-5 if precision == "fp32" else 2e-3
    for c, g in zip(cpu, gpu, strict=True):
        assert c is not None and g is not None and c.result is not None and g.result is not None
        want = {r["label"]: r["score"] for r in c.result}
        for r in g.result:
            assert math.isclose(r["score"], want[r["label"]], abs_tol=tolerance)
