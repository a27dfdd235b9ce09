"""The worker's Celery app: built from settings on first access, with the prefork parent kept free of torch."""

from __future__ import annotations

import subprocess
import sys


def test_the_worker_app_loads_no_torch_in_the_parent_process() -> None:
    # Given a fresh interpreter that builds the worker's app the way `celery -A worker.app` does
    code = (
        "import sys\n"
        "import worker.app\n"
        "app = worker.app.app\n"
        "assert 'inferq.run_chunk' in app.tasks\n"
        "conf = app.conf\n"
        "print(conf.task_serializer, sorted(conf.accept_content), conf.task_acks_late, conf.worker_prefetch_multiplier,"
        " conf.task_ignore_result, conf.task_reject_on_worker_lost)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    # Then it is configured for JSON only, late acks and prefetch 1, and torch has not been imported
    assert out[0] == "json ['json'] True 1 True True"
    assert out[1] == "False False"
