"""`python -m nnspec.runtime.web`: fetch the pinned onnxruntime-web into the cache now (CI does,
before the tests) and print where it is."""

import sys

from nnspec.runtime.model import UsageError
from nnspec.runtime.web import ensure_onnxruntime_web

try:
    print(ensure_onnxruntime_web())
except UsageError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
