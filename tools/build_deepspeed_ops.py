#!/usr/bin/env python3
"""Build DeepSpeed's JIT-compiled ops for this machine once, before any timed run or test.

On CPU, DeepSpeed compiles a shared-memory communication op with g++ the first time a process
group is created (30-76 s), caching it under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions).
CI runs this in its set-up so no test pays for the build. Without DeepSpeed installed it does nothing.

    python tools/build_deepspeed_ops.py
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    try:
        from deepspeed.comm.torch import build_shm_op
    except ImportError:
        print("deepspeed is not installed: nothing to build")
        return 0
    t0 = time.perf_counter()
    op = build_shm_op()
    state = "ready" if op is not None else "not needed on this accelerator"
    print(f"deepspeed shared-memory comm op: {state} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
