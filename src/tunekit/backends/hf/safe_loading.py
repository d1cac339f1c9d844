"""Only safetensors and JSON are read unless the user opts in: pickle can run code when it is loaded.

Model and adapter weights stored with pickle (``pytorch_model.bin``, ``adapter_model.bin``, ``.pt``,
``.pkl``) are refused with a clear error unless ``Training(allow_pickle=True)``; models load with
``use_safetensors=True``. Checkpoint state that transformers itself writes with ``torch.save``
(``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``) is read by transformers with torch's
``weights_only=True`` unpickler, which loads tensors and plain containers only, and tunekit checks
the file against the checkpoint manifest's sha256 before that (see ``resume.py``).
``training_args.bin``, a pickle transformers leaves in every checkpoint, is never read.
"""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import CheckpointError

__all__ = ["PICKLE_SUFFIXES", "check_weights"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}


def check_weights(path: str | Path, *, allow_pickle: bool, what: str = "model") -> None:
    """Refuse a local directory whose weights exist only as pickle files, unless ``allow_pickle``."""
    p = Path(path)
    if allow_pickle or not p.is_dir():
        return  # a hub id: transformers is asked for safetensors only (use_safetensors=True)
    files = [f for f in p.iterdir() if f.is_file()]
    if what == "adapter":  # peft reads adapter_model.safetensors, else adapter_model.bin: any other file is a decoy
        if (p / "adapter_model.safetensors").is_file():
            return
    elif any(f.suffix == ".safetensors" for f in files):
        return
    pickled = sorted(
        f.name
        for f in files
        if f.suffix in PICKLE_SUFFIXES and f.name not in _NOT_WEIGHTS and "rng_state" not in f.name
    )
    if pickled:
        raise CheckpointError(
            f"{p}: the {what} weights are stored with pickle ({', '.join(pickled)}), which can run code when loaded, "
            "and tunekit reads only safetensors by default. Convert them (load once with transformers / peft and "
            "save_pretrained(path), which writes safetensors), or pass Training(allow_pickle=True) if you trust "
            "the files"
        )
