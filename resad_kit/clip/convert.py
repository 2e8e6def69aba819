"""``python -m resad_kit.clip.convert SRC DST``: a CLIP checkpoint to a ``.safetensors`` file.

The command line of :func:`~resad_kit.clip.conversion.convert_to_safetensors`;
no code from ``SRC`` runs unless ``--trust-checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resad_kit.clip.conversion import convert_to_safetensors

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m resad_kit.clip.convert SRC DST [--trust-checkpoint] [--overwrite]``.

    Returns the exit status: 0 on success; usage errors and unreadable files print
    one line to stderr and return 2.
    """
    parser = argparse.ArgumentParser(
        prog="python -m resad_kit.clip.convert",
        description="Convert a CLIP checkpoint (OpenAI's TorchScript .pt or a torch.save "
        "state dict) to a .safetensors file, without running code from the file.",
    )
    parser.add_argument("src", type=Path, help="checkpoint to read")
    parser.add_argument("dst", type=Path, help="the .safetensors file to write")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read a TorchScript archive with torch.jit.load, which RUNS CODE stored in the "
        "file; only for files from a source you trust",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    try:
        out = convert_to_safetensors(
            args.src, args.dst, trust_code=args.trust_checkpoint, overwrite=args.overwrite
        )
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
