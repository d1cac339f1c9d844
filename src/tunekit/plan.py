"""``tk.Plan``: what a run will cost, before it runs (``tuner.plan(data)``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Plan", "SourceFigures"]


def _gib(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class SourceFigures:
    """One source of a :class:`tunekit.Mix`, as a run trains it: its valid ``rows``, the rows ``drawn`` from it
    into the mixture (repeats counted) and the ``tokens`` of those."""

    name: str
    rows: int
    drawn: int
    tokens: int


@dataclass(frozen=True)
class Plan:
    """The parameters, data and estimated peak memory of a run, computed without training.

    Parameter counts are exact (the method is applied to the model, on the meta device when the
    model is not loaded yet); ``examples``, ``tokens`` and ``steps`` are what ``fit`` will see.
    Memory is an estimate of the peak on the training device: ``weights`` (every parameter in its
    storage dtype), ``gradients`` (trainable parameters), ``optimizer`` (the state of ``Training(optimizer=...)``,
    counted as that optimizer allocates it: AdamW's two moments, 8-bit states with their block scales, Adafactor's
    factored moments, GaLore's projections and low-rank moments, ...; equal to the measured state on the CPU),
    ``activations`` (for the largest of the run's micro-batches, drawn as the trainer draws them:
    what the forward keeps for the backward, from a per-layer formula of the model's structure,
    precision, gradient checkpointing and activation offloading; the transient peak of the LM head's chunked loss; and
    autocast's 16-bit copies of fp32 weights). Nothing is run to compute it; on the CPU it is
    within a few percent of a measured step (``benchmarks/plan_accuracy.py``). ``fits`` compares
    the total with 95% of ``device_memory_bytes``: the CUDA device's memory, or on the CPU the RAM
    available when the plan was made, or what ``plan(device_memory_gib=...)`` gave; for a CUDA device
    the machine does not have (planned for with ``Training(device="cuda")``) and no memory given, both are None.
    ``sources``: for a :class:`tunekit.Mix`, each source's valid rows, the rows drawn from it and their tokens.
    For a vision-language model ``tokens`` includes each image's tokens (the processor's count for the image's size,
    after the pixel budget), ``images`` and ``image_tokens`` say how many, and ``vision_params`` /
    ``vision_trainable_params`` are the vision tower's and projector's parameters (part of the counts above).

    Example:
        >>> import tunekit as tk
        >>> plan = tk.Tuner("Qwen/Qwen2-0.5B").plan("train.jsonl")  # doctest: +SKIP
        >>> print(plan)  # doctest: +SKIP
        >>> plan.to_dict()["memory"]["total"]  # doctest: +SKIP
        >>> tk.Plan(method="LoRA", objective="SFT", device="cpu", precision="fp32", trainable_params=1,
        ...         total_params=10, examples=4, tokens=40, steps=1, micro_batch_tokens=40, packing=True,
        ...         gradient_checkpointing=False, weights_bytes=40, gradients_bytes=4, optimizer_bytes=8,
        ...         activations_bytes=100, device_memory_bytes=None, fits=None).total_bytes
        152
    """

    method: str
    objective: str
    device: str
    precision: str
    trainable_params: int
    total_params: int
    examples: int
    tokens: int
    steps: int
    micro_batch_tokens: int  # tokens in the largest micro-batch the run likely sees (activations are sized for it)
    packing: bool
    gradient_checkpointing: bool
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    device_memory_bytes: int | None  # the CUDA device's total memory; on CPU, the RAM available when planned
    fits: bool | None  # total <= 95% of device_memory_bytes (None when that is not known)
    optimizer: str = "adamw"  # Training(optimizer=...), whose state optimizer_bytes counts
    activation_offload: bool = False  # activations offloaded to CPU memory (Training(activation_offload), CUDA)
    sources: tuple[SourceFigures, ...] = ()  # a tk.Mix's sources: rows and tokens of each
    # A vision-language model: its data's images, the tokens that stand for them (in ``tokens``: the processor's
    # count for each image's size), and the vision tower's and projector's parameters (in the parameter counts, and
    # their bytes in weights / gradients / optimizer like every other parameter's).
    images: int = 0
    image_tokens: int = 0
    vision_params: int = 0
    vision_trainable_params: int = 0

    @property
    def total_bytes(self) -> int:
        """Estimated peak memory: weights + gradients + optimizer state + activations."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures: counts, then ``memory`` in bytes (``weights`` ... ``total``)."""
        d = asdict(self)
        memory = {
            k.removesuffix("_bytes"): d.pop(k) for k in list(d) if k.endswith("_bytes") and k != "device_memory_bytes"
        }
        memory["total"] = self.total_bytes
        d["memory"] = memory
        d["sources"] = [asdict(s) for s in self.sources]  # a list, as JSON gives it back
        d["trainable_fraction"] = self.trainable_fraction
        return d

    def __str__(self) -> str:
        fits = {True: "yes", False: "NO", None: "-"}[self.fits]
        memory = "  device memory  " if self.device.startswith("cuda") else "  RAM available  "
        lines = [
            f"Plan: {self.method} + {self.objective} on {self.device} ({self.precision})",
            f"  parameters     {self.trainable_params:,} trainable of {self.total_params:,} "
            f"({100 * self.trainable_fraction:.2f}%)",
            f"  data           {self.examples:,} examples, {self.tokens:,} tokens, {self.steps:,} steps",
            *(
                f"    {s.name}: {s.drawn:,} rows drawn of {s.rows:,}"
                + (f" (repeated {s.drawn / s.rows:.1f}x)" if s.drawn > s.rows else "")
                + f", {s.tokens:,} tokens"
                for s in self.sources
            ),
            *(
                [
                    f"  vision         {self.images:,} images, {self.image_tokens:,} image tokens; tower and "
                    f"projector {self.vision_trainable_params:,} trainable of {self.vision_params:,} parameters"
                ]
                if self.vision_params or self.images
                else []
            ),
            f"  micro-batch    {self.micro_batch_tokens:,} tokens at most"
            f" (packing {'on' if self.packing else 'off'}, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
            f"{', activations offloaded' if self.activation_offload else ''})",
            "  memory (est.)",
            f"    weights      {_gib(self.weights_bytes)}",
            f"    gradients    {_gib(self.gradients_bytes)}",
            f"    optimizer    {_gib(self.optimizer_bytes)} ({self.optimizer})",
            f"    activations  {_gib(self.activations_bytes)}",
            f"    total        {_gib(self.total_bytes)}",
            f"{memory}{_gib(self.device_memory_bytes)}"
            + (" (not known here: plan(data, device_memory_gib=...))" if self.device_memory_bytes is None else ""),
            f"  fits           {fits}",
        ]
        return "\n".join(lines)
