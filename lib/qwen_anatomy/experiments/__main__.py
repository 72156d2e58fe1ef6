"""Worker entry: ``python -m qwen_anatomy.experiments SPEC_JSON`` executes one run (started by the runner)."""

import json
import sys

from .runner import _execute_in_worker

raise SystemExit(_execute_in_worker(json.loads(sys.argv[1])))
