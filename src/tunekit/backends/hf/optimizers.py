"""``Training(optimizer=...)`` for the hf backend: checks before loading, the trainer's optimizer, its state's bytes.

Where transformers builds an optimizer by name (``TrainingArguments.optim``) it does: AdamW (fused), bitsandbytes'
8-bit and paged 8-bit AdamW (with the embeddings kept in 32-bit state), Adafactor, bitsandbytes' Lion, SGD. GaLore,
APOLLO and Muon are built by tunekit (a factory in ``trainer.optimizer_cls_and_kwargs``, read by transformers'
``Trainer.create_optimizer``), for reasons transformers' own paths cannot meet:

- GaLore and APOLLO keep a projector *object* in each weight's state; transformers loads ``optimizer.pt`` with
  ``torch.load(weights_only=True)``, which refuses objects, so a resumed run could not restore them. tunekit's
  optimizer writes the projector's tensors and numbers into the state dict and rebuilds it on load.
- Muon updates only 2-D matrices: torch.optim.Muon for the hidden layers' weights, AdamW for everything else,
  behind one optimizer the trainer, its scheduler and checkpoints see as one.

:func:`state_bytes` is ``plan()``'s count of each optimizer's state, checked against the real optimizers after one
step in tests/integration/test_optimizers.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Iterator
from typing import Any

from tunekit._torch import unique_parameters, unwrap_peft
from tunekit.distributed import DeepSpeed, shards_parameters, world
from tunekit.errors import IncompatibleError, MissingDependencyError
from tunekit.methods import Method
from tunekit.optimizers import APOLLOOptions, GaLoreOptions, LionOptions, MuonOptions, SGDOptions, options_for
from tunekit.training import Training

__all__ = [
    "REQUIREMENTS",
    "check_optimizer",
    "install_optimizer",
    "low_rank_targets",
    "measured_state_bytes",
    "muon_targets",
    "optimizer_args",
    "state_bytes",
]

# optimizer -> (importable module, what to pip install)
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "adamw_8bit": ("bitsandbytes", "bitsandbytes"),
    "paged_adamw_8bit": ("bitsandbytes", "bitsandbytes"),
    "lion": ("bitsandbytes", "bitsandbytes"),
    "galore": ("galore_torch", "'tunekit[galore]'"),
    "apollo": ("apollo_torch", "'tunekit[apollo]'"),
}
_BNB_CPU = (0, 50)  # bitsandbytes' optimizers have CPU kernels from 0.50 (verified: 0.50.2 runs them on CPU)
_BNB_MIN_8BIT = 4096  # bitsandbytes keeps tensors smaller than this (min_8bit_size) in 32-bit state
_BNB_BLOCK = 256  # its 8-bit states are quantized in blocks of 256 values, one fp32 scale (absmax) each
_BNB_QMAP = 256 * 4  # ... through a 256-entry fp32 code book, one per state (shared by every tensor)


def _version(package: str) -> tuple[int, ...]:
    try:
        text = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


def check_optimizer(training: Training, device: Any, method: Method) -> None:
    """Fail before any weights load when ``training.optimizer`` cannot run here: its package is missing, it needs
    CUDA, or it does not suit the method. The error names the fix."""
    name = training.optimizer
    where = f"Training(optimizer={name!r})"
    need = REQUIREMENTS.get(name)
    if need is not None and importlib.util.find_spec(need[0]) is None:
        raise MissingDependencyError(
            f"{where} needs the {need[0]} package, which is not installed; run: pip install {need[1]}"
        )
    if name == "paged_adamw_8bit" and device.type != "cuda":
        raise IncompatibleError(
            f"{where} pages the optimizer state between GPU and CPU memory, which needs CUDA (device is "
            f"{device.type!r}); on the CPU use optimizer='adamw_8bit' (or 'adamw'), or train on a CUDA device"
        )
    if name in ("adamw_8bit", "lion") and device.type != "cuda" and _version("bitsandbytes") < _BNB_CPU:
        raise IncompatibleError(
            f"{where} runs bitsandbytes' optimizer, which needs CUDA or, on the CPU, bitsandbytes 0.50 or newer "
            f"(installed: {'.'.join(map(str, _version('bitsandbytes')))}); run: pip install -U bitsandbytes, or "
            "train on a CUDA device"
        )
    engine = training.distributed if world().distributed else None
    if name != "adamw" and isinstance(engine, DeepSpeed) and engine.offload != "none":
        raise IncompatibleError(
            f"{where} with tk.DeepSpeed(offload={engine.offload!r}): DeepSpeed updates offloaded optimizer states "
            "with its own CPU AdamW; use optimizer='adamw', or DeepSpeed without offload"
        )
    if name in ("galore", "apollo", "muon") and shards_parameters(engine):
        raise IncompatibleError(
            f"{where} needs each weight matrix whole (an SVD, a projection or an orthogonalisation of its update), "
            f"and {type(engine).__name__} shards them across processes; use tk.DDP() (or DeepSpeed stage 1-2), or "
            "optimizer='adamw' / 'adamw_8bit'"
        )
    if name in ("galore", "apollo") and method.is_adapter:
        raise IncompatibleError(
            f"{where} projects full-rank weight gradients to a low rank, and {method.name} trains low-rank adapters "
            "already (nothing to save); use it with method=tk.Full() or tk.Freeze(), or optimizer='adamw' here"
        )


def optimizer_args(training: Training) -> dict[str, Any]:
    """The ``TrainingArguments`` of the optimizers transformers builds by name (``optim=``, ``optim_args``, betas)."""
    options = options_for(training.optimizer, training.optimizer_options)
    name = training.optimizer
    if name == "adamw_8bit":
        return {"optim": "adamw_bnb_8bit"}
    if name == "paged_adamw_8bit":
        return {"optim": "paged_adamw_8bit"}
    if name == "adafactor":
        return {"optim": "adafactor"}
    if name == "lion" and isinstance(options, LionOptions):
        return {"optim": "lion_32bit", "adam_beta1": options.beta1, "adam_beta2": options.beta2}
    if name == "sgd" and isinstance(options, SGDOptions):
        return {"optim": "sgd", "optim_args": f"momentum={options.momentum},nesterov={options.nesterov}"}
    # adamw, and galore / apollo / muon (built by install_optimizer; the name is what their AdamW part would use)
    return {"optim": "adamw_torch_fused"}


# --- which parameters go where ---------------------------------------------------------------------------------


def _head_and_embedding(model: Any) -> set[int]:
    ids: set[int] = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None:
            ids |= {id(p) for p in module.parameters()}
    return ids


def _matches(name: str, targets: str | tuple[str, ...]) -> bool:
    if isinstance(targets, str):
        return targets.replace("_", "-") == "all-linear" or name == targets or name.endswith("." + targets)
    return any(name == t or name.endswith("." + t) for t in targets)


def low_rank_targets(model: Any, targets: str | tuple[str, ...]) -> list[Any]:
    """The trainable weights GaLore / APOLLO project: of the linear layers ``targets`` names, never the output head
    or the embeddings (the rest trains with plain AdamW)."""
    import torch

    skip = _head_and_embedding(model)
    found = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None or not weight.requires_grad:
            continue
        if id(weight) not in skip and _matches(name, targets):
            found.append(weight)
    return found


def muon_targets(model: Any) -> list[Any]:
    """The trainable 2-D matrices of the hidden layers, which Muon updates (not the embeddings nor the head)."""
    skip = _head_and_embedding(model)
    return [p for p in unique_parameters(model) if p.requires_grad and p.ndim == 2 and id(p) not in skip]


# --- optimizers tunekit builds ---------------------------------------------------------------------------------


def _muon_class() -> type:
    import torch

    class _MuonWithAdamW(torch.optim.Optimizer):  # type: ignore[misc]
        """torch.optim.Muon for the hidden layers' matrices and torch.optim.AdamW for the other parameters, seen as
        one optimizer: its ``param_groups`` are the two optimizers' (Muon's first), its ``state`` is shared, so the
        scheduler, gradient clipping, checkpoints and a resume see one optimizer. torch has no such combination."""

        def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]], **kw: Any) -> None:
            muon_groups = [g for g in muon_groups if g["params"]]
            adamw_groups = [g for g in adamw_groups if g["params"]]
            self.muon = torch.optim.Muon(muon_groups, **kw["muon"]) if muon_groups else None
            self.adamw = torch.optim.AdamW(adamw_groups, **kw["adamw"]) if adamw_groups else None
            groups = [*(self.muon.param_groups if self.muon else []), *(self.adamw.param_groups if self.adamw else [])]
            super().__init__(groups, {})
            self._link()

        def _link(self) -> None:
            # The inner optimizers step through this one's groups and state (load_state_dict replaces both).
            n = len(self.muon.param_groups) if self.muon else 0
            if self.muon is not None:
                self.muon.param_groups, self.muon.state = self.param_groups[:n], self.state
            if self.adamw is not None:
                self.adamw.param_groups, self.adamw.state = self.param_groups[n:], self.state

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            self._link()

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for inner in (self.muon, self.adamw):
                if inner is not None:
                    inner.step()
            return loss

    _MuonWithAdamW.__name__ = _MuonWithAdamW.__qualname__ = "MuonWithAdamW"
    return _MuonWithAdamW


def _projected_state(optimizer: Any) -> None:
    """GaLore / APOLLO keep a projector object in each projected weight's state, which ``torch.load(weights_only=
    True)`` (how transformers reads optimizer.pt) refuses: write its tensors and numbers instead, rebuild on load."""
    kind = type(optimizer).__module__.split(".")[0]

    def save(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        packed = {}
        for key, state in state_dict["state"].items():
            projector = state.get("projector")
            if projector is None:
                packed[key] = state
                continue
            state = {k: v for k, v in state.items() if k != "projector"}  # a copy: the live state keeps its object
            state["projector.ortho_matrix"] = projector.ortho_matrix
            for attr in ("seed", "svd_count"):
                if hasattr(projector, attr):
                    state[f"projector.{attr}"] = getattr(projector, attr)
            packed[key] = state
        return {**state_dict, "state": packed}

    def load(opt: Any) -> None:
        groups = {id(p): g for g in opt.param_groups for p in g["params"]}
        for p, state in opt.state.items():
            if "projector.ortho_matrix" not in state:
                continue
            group = groups[id(p)]
            projector = _new_projector(kind, group, state)
            projector.ortho_matrix = state.pop("projector.ortho_matrix")
            for attr in ("seed", "svd_count"):
                if f"projector.{attr}" in state:
                    setattr(projector, attr, int(state.pop(f"projector.{attr}")))
            state["projector"] = projector

    def compact(opt: Any, args: Any, kwargs: Any) -> None:
        # GaLore's projection is a slice of the whole SVD (Vh[:rank] of an n x n matrix in fp32): the slice keeps all of
        # it alive, e.g. 64 MiB for a 4096 x 4096 weight instead of 2 MiB at rank 128. Keep a copy of the slice only.
        for state in opt.state.values():
            projector = state.get("projector")
            ortho = getattr(projector, "ortho_matrix", None)
            if ortho is not None and ortho.untyped_storage().nbytes() > ortho.numel() * ortho.element_size():
                projector.ortho_matrix = ortho.clone()

    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_post_hook(load)
    optimizer.register_step_post_hook(compact)


def _new_projector(kind: str, group: dict[str, Any], state: dict[str, Any]) -> Any:
    common = {"update_proj_gap": group["update_proj_gap"], "scale": group["scale"], "proj_type": group["proj_type"]}
    if kind == "apollo_torch" and group.get("proj") == "random":
        from apollo_torch.random_projector import GradientProjector

        return GradientProjector(group["rank"], seed=int(state.get("projector.seed", 0)), **common)
    if kind == "apollo_torch":
        from apollo_torch.svd_projector import GaLoreProjector as ApolloSVD

        return ApolloSVD(group["rank"], **common)
    from galore_torch.galore_projector import GaLoreProjector

    return GaLoreProjector(group["rank"], **common)


def _decay_split(trainer: Any, params: list[Any]) -> tuple[list[Any], list[Any]]:
    """``params`` split as transformers splits them for weight decay (none on biases and norms)."""
    names = set(trainer.get_decay_parameter_names(trainer.model))
    decay_ids = {id(p) for n, p in trainer.model.named_parameters() if n in names}
    return [p for p in params if id(p) in decay_ids], [p for p in params if id(p) not in decay_ids]


class _Factory:
    """What transformers' ``create_optimizer`` calls as ``factory()(model, **kwargs)``: tunekit's optimizer."""

    def __init__(self, build: Any) -> None:
        self.build = build

    def __call__(self) -> Any:
        return self.build


def install_optimizer(trainer: Any, training: Training, learning_rate: float) -> None:
    """For GaLore, APOLLO and Muon, have ``trainer`` build tunekit's optimizer when it creates its optimizer."""
    name = training.optimizer
    options = options_for(name, training.optimizer_options)
    decay = training.weight_decay
    if name in ("galore", "apollo") and isinstance(options, (GaLoreOptions, APOLLOOptions)):

        def build_low_rank(model: Any, **_: Any) -> Any:
            targets = low_rank_targets(model, options.target_modules)
            if not targets:
                raise IncompatibleError(
                    f"Training(optimizer={name!r}): no trainable linear layer matches target_modules="
                    f"{options.target_modules!r}; name layers of the decoder (e.g. ('q_proj', 'v_proj')) or use "
                    "'all-linear'"
                )
            ids = {id(p) for p in targets}
            rest = [p for p in unique_parameters(model) if p.requires_grad and id(p) not in ids]
            rest_decay, rest_plain = _decay_split(trainer, rest)
            low: dict[str, Any] = {
                "rank": options.rank,
                "update_proj_gap": options.update_proj_gap,
                "scale": options.scale,
                "proj_type": options.proj_type,
            }
            if isinstance(options, APOLLOOptions):
                low |= {"proj": options.proj, "scale_type": options.scale_type}
                from apollo_torch import APOLLOAdamW as cls
            else:
                from galore_torch import GaLoreAdamW as cls
            groups = [
                {"params": rest_decay, "weight_decay": decay},
                {"params": rest_plain, "weight_decay": 0.0},
                {"params": targets, "weight_decay": decay, **low},
            ]
            kw: dict[str, Any] = {"lr": learning_rate, "betas": (0.9, 0.999), "eps": 1e-8}
            if cls.__module__.startswith("galore_torch"):
                kw["no_deprecation_warning"] = True
            optimizer = cls([g for g in groups if g["params"]], **kw)
            _projected_state(optimizer)
            return optimizer

        trainer.optimizer_cls_and_kwargs = (_Factory(build_low_rank), {})
    elif name == "muon" and isinstance(options, MuonOptions):

        def build_muon(model: Any, **_: Any) -> Any:
            matrices = muon_targets(model)
            ids = {id(p) for p in matrices}
            rest = [p for p in unique_parameters(model) if p.requires_grad and id(p) not in ids]
            m_decay, m_plain = _decay_split(trainer, matrices)
            r_decay, r_plain = _decay_split(trainer, rest)
            muon = {
                "lr": learning_rate,
                "weight_decay": decay,
                "momentum": options.momentum,
                "nesterov": options.nesterov,
                "ns_steps": options.ns_steps,
                "adjust_lr_fn": options.adjust_lr,
            }
            cls = _muon_class()
            return cls(
                [{"params": m_decay}, {"params": m_plain, "weight_decay": 0.0}],
                [{"params": r_decay}, {"params": r_plain, "weight_decay": 0.0}],
                muon=muon,
                adamw={"lr": learning_rate, "weight_decay": decay, "fused": True},
            )

        trainer.optimizer_cls_and_kwargs = (_Factory(build_muon), {})


# --- plan(): the bytes of each optimizer's state ---------------------------------------------------------------


def _embeddings(model: Any) -> set[int]:
    """Parameters of nn.Embedding modules (transformers keeps them in 32-bit state under bitsandbytes' 8-bit Adam)."""
    import torch

    return {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}


def _low_rank_bytes(p: Any, options: GaLoreOptions | APOLLOOptions) -> int:
    """A projected weight's state: the projection matrix, AdamW's two moments of the projected gradient, and for
    APOLLO the norm of the last scaled update (one scalar)."""
    m, n = int(p.shape[0]), int(p.shape[1])
    size = p.element_size()
    galore_svd = isinstance(options, GaLoreOptions) or options.proj == "svd"
    # GaLore's projection comes from an SVD, so at most min(m, n) vectors; APOLLO's random one is always `rank` wide.
    r = min(options.rank, m, n) if galore_svd else options.rank
    side = {"std": "right" if m >= n else "left", "reverse_std": "left" if m >= n else "right"}.get(
        options.proj_type, options.proj_type
    )
    projection = r * n if side == "right" else m * r
    moments = 2 * (m * r if side == "right" else r * n)
    scalar = 0 if isinstance(options, GaLoreOptions) else 1
    return size * (projection + moments + scalar)


def _adafactor_bytes(p: Any) -> int:
    # transformers' Adafactor: fp32 factored second moments (rows and columns) for matrices, full for vectors, and the
    # parameter's RMS as a fp32 scalar.
    shape = tuple(int(s) for s in p.shape)
    if len(shape) >= 2:
        return 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1] + 1)
    return 4 * (math.prod(shape) + 1)


def _bnb_8bit_bytes(params: list[Any], embeddings: set[int]) -> int:
    total, quantized = 0, False
    for p in params:
        n = p.numel()
        if id(p) in embeddings or n < _BNB_MIN_8BIT:
            total += 2 * 4 * n  # two fp32 states
        else:
            quantized = True
            total += 2 * n + 2 * 4 * math.ceil(n / _BNB_BLOCK)  # two uint8 states, one fp32 scale a block each
    return total + (2 * _BNB_QMAP if quantized else 0)


def state_bytes(training: Training, model: Any) -> int:
    """Bytes of the optimizer's state for ``model``'s trainable parameters, as the optimizer allocates it (tensors
    only; a shared tensor once)."""
    name = training.optimizer
    options = options_for(name, training.optimizer_options)
    params = [p for p in unique_parameters(model) if p.requires_grad]

    def adamw(ps: list[Any]) -> int:  # torch's AdamW: exp_avg, exp_avg_sq in the parameter's dtype, a fp32 step
        return sum(2 * p.numel() * p.element_size() + 4 for p in ps)

    if name == "adamw":
        return adamw(params)
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        return _bnb_8bit_bytes(params, _embeddings(unwrap_peft(model)))
    if name == "lion":  # bitsandbytes' 32-bit Lion: one fp32 momentum
        return sum(4 * p.numel() for p in params)
    if name == "sgd":
        momentum = options.momentum if isinstance(options, SGDOptions) else 0.9
        return sum(p.numel() * p.element_size() for p in params) if momentum else 0
    if name == "adafactor":
        return sum(_adafactor_bytes(p) for p in params)
    if name in ("galore", "apollo") and isinstance(options, (GaLoreOptions, APOLLOOptions)):
        targets = {id(p) for p in low_rank_targets(model, options.target_modules)}
        # the rest: AdamW moments without a step tensor (their step is a Python int)
        return sum(
            _low_rank_bytes(p, options) if id(p) in targets else 2 * p.numel() * p.element_size() for p in params
        )
    if name == "muon":
        matrices = {id(p) for p in muon_targets(model)}
        return sum(p.numel() * p.element_size() for p in params if id(p) in matrices) + adamw(
            [p for p in params if id(p) not in matrices]
        )
    raise AssertionError(f"no state formula for optimizer {name!r}")  # OPTIMIZERS and this table move together


def measured_state_bytes(optimizer: Any) -> int:
    """Bytes of the tensors in an optimizer's state, each storage once (the 8-bit code books are shared)."""
    import torch

    def tensors(value: Any) -> Iterator[Any]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from tensors(v)
        elif hasattr(value, "ortho_matrix"):  # a GaLore / APOLLO projector
            yield from tensors(value.ortho_matrix)

    seen: dict[Any, int] = {}
    for state in optimizer.state.values():
        for t in tensors(state):
            seen[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    return sum(seen.values())
