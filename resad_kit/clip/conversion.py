"""Convert a CLIP checkpoint (OpenAI's TorchScript ``.pt``, a ``torch.save`` file) to safetensors.

One line, in Python or in a shell::

    convert_to_safetensors("ViT-L-14-336px.pt", "ViT-L-14-336px.safetensors")
    python -m resad_kit.clip.convert ViT-L-14-336px.pt ViT-L-14-336px.safetensors

A ``.safetensors`` file holds tensors and a JSON header only: loading it can run
no code, and it loads faster. The source is read as
:func:`~resad_kit.clip.checkpoints.read_state_dict` reads it (no code from the
file runs unless ``trust_code=True`` / ``--trust-checkpoint``).
"""

from __future__ import annotations

import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from resad_kit.clip.checkpoints import read_state_dict

__all__ = ["convert_to_safetensors"]


def convert_to_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    trust_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the weights of the checkpoint ``src`` to the safetensors file ``dst``.

    The file is written atomically (a temporary file in the same folder, flushed
    to disk, then renamed), and its header is checked against the tensors read.
    Tensors keep their dtype (OpenAI's weights are float16); TorchScript extras
    (``input_resolution``, ``context_length``, ``vocab_size``) are left out.
    ``ClipBackbone.from_pretrained(model_name, dst)`` then loads it.

    Args:
        src: a checkpoint file: OpenAI's TorchScript ``.pt``, an open_clip state
            dict saved with ``torch.save`` (``.pt``/``.pth``/``.bin``), or ``.safetensors``.
        dst: the safetensors file to write.
        trust_code: read a TorchScript ``src`` with ``torch.jit.load``, which runs
            code stored in the file; only for a file from a source you trust (see
            :func:`~resad_kit.clip.checkpoints.read_state_dict`).
        overwrite: replace an existing ``dst``.

    Returns:
        ``dst`` as a ``Path``.

    Raises:
        FileNotFoundError: ``src`` is not a file.
        FileExistsError: ``dst`` exists and ``overwrite`` is False, or is a directory.
        OSError: writing ``dst`` failed (no partial ``dst`` is left behind).
        ValueError: ``src`` and ``dst`` are the same file, ``dst`` does not end in
            ``.safetensors``, or ``src`` holds no state dict of tensors (or a
            TorchScript archive that cannot be read without running its code).

    Example:
        >>> import torch, warnings
        >>> from safetensors.torch import load_file
        >>> from resad_kit.clip import convert_to_safetensors
        >>> tmp = getfixture("tmp_path")
        >>> with warnings.catch_warnings():  # torch.jit.script is deprecated
        ...     warnings.simplefilter("ignore", FutureWarning)
        ...     torch.jit.script(torch.nn.Linear(3, 2)).save(str(tmp / "linear.pt"))
        >>> out = convert_to_safetensors(tmp / "linear.pt", tmp / "linear.safetensors")
        >>> sorted(load_file(out))
        ['bias', 'weight']
    """
    fn = "convert_to_safetensors"
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"{fn}: `src` is not a file: {src}")
    if dst.suffix != ".safetensors":
        raise ValueError(f"{fn}: `dst` must end in .safetensors; got {os.fspath(dst)!r}")
    if dst.is_dir():
        raise FileExistsError(f"{fn}: `dst` is a directory: {dst}")
    if dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"{fn}: `src` and `dst` are the same file: {src}")
    if dst.exists() and not overwrite:
        raise FileExistsError(
            f"{fn}: {dst} exists; pass overwrite=True (--overwrite) to replace it"
        )
    state = read_state_dict(src, trust_code=trust_code)
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise ValueError(f"{fn}: {src} holds non-tensor entries {others[:4]}; not a state dict")
    # Own contiguous copies: safetensors refuses views and tensors that share memory.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        with safetensors.safe_open(str(tmp), framework="pt") as written:
            shapes = {k: tuple(written.get_slice(k).get_shape()) for k in written.keys()}  # noqa: SIM118
        if shapes != {k: tuple(v.shape) for k, v in tensors.items()}:
            raise OSError(f"{fn}: the file written to {tmp} does not hold the tensors read")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
