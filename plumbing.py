"""Plumbing the scripts share: no machine learning here, a student can skip this file."""
import os
import sys


def skip_imports(*names):
    """Make these packages unimportable in this process: libraries that use them when installed
    (peft and trl import bitsandbytes) then carry on without them."""
    for name in names:
        # A module set to None in sys.modules makes `import name` raise ImportError.
        sys.modules.setdefault(name, None)


def keep_hub_code_out(load_in="none", cuda=False):
    """No code downloaded from the hub at run time; bitsandbytes only for 4-bit or 8-bit loading.

    transformers 5.25 and bitsandbytes 0.50 fetch compiled "kernels" from the hub when they can:
    on every from_pretrained, and on importing bitsandbytes on a CPU with AVX512-BF16. That is a
    network call, and code nobody reviewed; without them both run their own code. Call this
    before importing transformers, peft, trl or datasets.
    """
    # transformers' own switch (a user who wants hub kernels can set it to YES).
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    # trl reports each training run to the hub unless told not to.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quantised = load_in in ("4bit", "8bit") or (load_in == "auto" and cuda)
    skip_imports("kernels", *([] if quantised else ["bitsandbytes"]))
