"""What every trainer shares: run options, the learning-rate schedule, how a step's batch is split
over processes, gradient and log reduction across them, and resumable state on disk.

**Processes.** A trainer runs as one process (``python -m course_lib train-…``) or as several
under ``accelerate launch`` (one per GPU, or ``ACCELERATE_USE_CPU=1 … --multi_gpu
--num_processes 2`` on a CPU). ``--batch-size B`` is per process: with ``W`` processes, step
``k`` trains on the global batch of items ``k·W·B … (k+1)·W·B − 1`` and process ``r`` takes
the ``r``-th block of ``B`` of them (:class:`Shard`). Item ``i`` is a pure function of
``(seed, i)``, so ``W`` processes × ``B`` see exactly the items of one process × ``W·B``, in
the same order, and any random draw of a step (timesteps, noise, dropout) is made for the whole
global batch from a generator seeded by ``(seed, step)``, each process keeping its rows
(:meth:`Shard.take`). Gradients are averaged over processes (DDP through ``acc.prepare``, or
:func:`average_gradients` for the LoRA side-models), so one update of ``W`` × ``B`` equals
one of ``1`` × ``W·B`` up to float rounding. ``--steps`` counts optimiser steps whatever ``W``.
Only the main process writes checkpoints and prints.

**State.** Weights go to ``OUT``; what resuming needs goes next to it in ``OUT.state/``
(:func:`write_state`): one safetensors file (tensors, the optimisers flattened by
:func:`optimizer_tensors`, string metadata) and ``state.json`` (step, logs, arguments), each
written to a temporary file and renamed. No pickle is written or read.

Debugging hook: with ``COURSE_LOG_ITEMS=PATH`` in the environment, process ``r`` appends the
global item indices of every step to ``PATH.rank<r>`` (``items STEP i i i …``) and a line
``saved STEP`` for every checkpoint it writes; the multi-process tests read them to check that
the processes saw disjoint items and that only one wrote.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import config

# ----------------------------------------------------------------------------- settings and run options
#
# Each trainer's settings are ONE dataclass: type, default and help of every field, declared once.
# The command line is generated from it by 🤗 transformers' ``HfArgumentParser`` (already a
# dependency): ``--batch-size`` for ``batch_size``, ``--coords``/``--no-vocab`` for booleans,
# ``choices`` for ``Literal`` types. A field whose metadata has ``fast=`` takes that default on the
# command line in FAST mode (:func:`course_lib.config.pick`); in Python the dataclass default holds.


class _Numbers(tuple):
    """A tuple of numbers written ``a,b,c`` on the command line (and in help and recipes' commands)."""

    kind: type = float

    def __new__(cls, value=()):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return super().__new__(cls, (cls.kind(v) for v in value))

    def __str__(self) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self)


class Ints(_Numbers):
    """Whole numbers written ``8,16``."""

    kind = int


class Floats(_Numbers):
    """Numbers written ``1,2`` (e.g. a guidance pair ``s_img,s_txt``)."""

    kind = float


class Names(_Numbers):
    """Names written ``a,b,c``."""

    kind = str


def setting(default: Any = None, help: str | None = None, *, fast: Any = dataclasses.MISSING,
            **argparse_kw: Any) -> Any:
    """A dataclass field with its help (and, optionally, its FAST-mode command-line default ``fast``)."""
    meta = {"help": help, **argparse_kw}
    if fast is not dataclasses.MISSING:
        meta["fast"] = fast
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class RunOptions:
    """The options every trainer shares (each trainer's settings dataclass extends this one)."""

    steps: int = setting(1000, "optimiser steps, whatever the number of processes")
    batch_size: int = setting(8, "items per process per step; with N processes a step trains on N x this many "
                                 "distinct items")
    seed: int = setting(0, "seed of every random draw (item i of the data is a pure function of (seed, i))")
    save_every: int = setting(100, "checkpoint every this many steps and at the end")
    threads: int = setting(0, "torch CPU threads per process (0: torch's default)")
    out: str | None = setting(None, "checkpoint to write (OUT.state/ beside it holds what --resume needs; "
                                    "default: outputs/ and the command's file name)")
    resume: bool = setting(False, "continue from OUT and OUT.state/")
    recipe_file: str | None = setting(None, "the recipe file this run follows (set by 'reproduce'; recorded in "
                                            "the checkpoint)")


def run_option(name: str, default: Any, fast: Any = dataclasses.MISSING) -> Any:
    """Redeclare run option ``name`` of :class:`RunOptions` with this trainer's default (its help is shared)."""
    meta = dict(RunOptions.__dataclass_fields__[name].metadata)
    return setting(default, meta.pop("help"), fast=fast, **{k: v for k, v in meta.items() if k != "fast"})


#: Run options that do not change what is trained (left out when a checkpoint is compared with its recipe).
RUN_ONLY = ("out", "resume", "threads", "save_every", "recipe_file", "workers", "log_every")


def _parser_class():
    from transformers import HfArgumentParser

    class SettingsParser(HfArgumentParser):
        """``HfArgumentParser`` that reads a field's ``fast`` metadata as its FAST-mode default."""

        @staticmethod
        def _parse_dataclass_field(parser, field):
            import copy
            import types

            meta = dict(field.metadata)
            fast = meta.pop("fast", dataclasses.MISSING)
            f = copy.copy(field)
            f.metadata = types.MappingProxyType({k: v for k, v in meta.items() if v is not None or k != "help"})
            if fast is not dataclasses.MISSING and config.is_fast():
                f.default = fast
            HfArgumentParser._parse_dataclass_field(parser, f)

    return SettingsParser


def settings_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of settings dataclass ``cls``: one option per field (``--batch-size`` for ``batch_size``)."""
    p = _parser_class()(cls, prog=prog, description=description)
    for action in p._actions:  # one spelling per option: HfArgumentParser also adds --batch_size
        for name in [o for o in action.option_strings if "_" in o]:
            action.option_strings.remove(name)
            del p._option_string_actions[name]
    return p


def parse_settings(cls: type, argv: Sequence[str] | None, prog: str, description: str,
                   default_out: str | None = None):
    """Parse ``argv`` into ``cls`` (argparse's usual errors: one line, exit code 2); apply ``--threads``.

    ``default_out``: the file name under ``outputs/`` that ``--out`` defaults to on the command line.
    """
    p = settings_parser(cls, prog, description)
    ns = p.parse_args(argv)
    args = cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init})
    if default_out and getattr(args, "out", None) is None:
        args.out = str(config.OUTPUT_DIR / default_out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def settings_error(command: str, message: str) -> None:
    """Stop with argparse's kind of error: one line on stderr, exit code 2."""
    print(f"python -m course_lib {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def settings_of(args: Any) -> dict:
    """The run's full settings, JSON-ready (every field but ``resume`` and ``recipe_file``)."""
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in ("resume", "recipe_file")}


#: What each trainer fits its outputs to: ``"exact"`` (the collection's exact ground-truth edits) or
#: ``"none"`` (no paired target: distilled from a teacher, or a reconstruction of the input itself).
PAIRED_TARGETS = {"train-student": "exact", "train-teacher": "exact", "train-align": "exact",
                  "train-vsd": "none", "train-inverter": "none"}


def recipe_metadata(command: str, args: Any) -> dict[str, str]:
    """What every new checkpoint records of how it was made: ``recipe`` (JSON: the command, its full
    settings and the ``recipe`` of the checkpoint it started from, if any), ``recipe_file``, ``data``
    (always ``"world"``: the photo collection's training photos), ``paired_targets``
    (:data:`PAIRED_TARGETS`) and, for a trainer that uses a teacher, ``teacher`` (its tier)."""
    init = getattr(args, "init", None)
    parent = None
    if isinstance(init, str) and Path(init).is_file():
        from safetensors import safe_open

        with safe_open(init, framework="pt") as f:
            parent = json.loads((f.metadata() or {}).get("recipe", "null"))
    meta = {"recipe": json.dumps({"command": command, "settings": settings_of(args), "init": parent}),
            "data": "world", "paired_targets": PAIRED_TARGETS.get(command, "none")}
    if getattr(args, "teacher", None):
        meta["teacher"] = str(args.teacher)
    if getattr(args, "recipe_file", None):
        meta["recipe_file"] = Path(args.recipe_file).name
    return meta


def summary(command: str, values: Sequence[float], seconds: float, what: str, out: Any, fmt: str = ".4f",
            most: int = 50) -> str:
    """``command: N steps in S s; WHAT first k: a, last k: b; wrote OUT`` (k: a quarter of the run, at most
    ``most``)."""
    n = len(values)
    k = max(1, min(most, n // 4))
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return (f"{command}: {n} steps in {seconds:.0f} s; {what} first {k}: {first:{fmt}}, last {k}: {last:{fmt}}; "
            f"wrote {out}")


def is_main_process() -> bool:
    """Whether this is the process that writes and prints (the only one outside ``accelerate launch``)."""
    from accelerate import PartialState

    return PartialState().is_main_process


# ----------------------------------------------------------------------------- the learning rate


def lr_at(step: int, lr: float, warmup: int = 0, steps: int = 1, decay: str = "constant", floor: float = 0.0,
          cooldown: int = 0) -> float:
    """The learning rate of optimiser step ``step`` (0-based): THE schedule of every trainer.

    ``lr · (step + 1) / warmup`` during the warm-up, then ``lr`` (``decay="constant"``) or a
    cosine from ``lr`` down to ``floor · lr`` at the last step (``decay="cosine"``):
    ``lr · (floor + (1 − floor) · ½ (1 + cos(π t)))``, ``t = (step − warmup) / (steps − warmup)``.

    ``cooldown = K > 0`` (with ``decay="constant"``): the same cosine over the last ``K`` steps only,
    ``t = (step − (steps − K)) / K`` (a constant rate that can be resumed for longer, then cooled down).

    """
    if step < warmup:
        return lr * ((step + 1) / max(1, warmup))
    if decay == "constant":
        if cooldown <= 0 or step < steps - cooldown:
            return lr * 1.0
        # lr · (floor + (1 − floor) · ½ (1 + cos(π t))) over the last K steps
        c = math.cos(math.pi * min(1.0, (step - (steps - cooldown)) / cooldown))
        return lr * (floor + (1 - floor) * 0.5 * (1 + c))
    if decay != "cosine":
        raise ValueError(f"decay must be 'constant' or 'cosine', not {decay!r}")
    done, span = step - warmup, max(1, steps - warmup)
    c = math.cos(math.pi * min(1.0, done / span))
    return lr * (floor + (1 - floor) * 0.5 * (1 + c))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in opt.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of every step: ``batch`` items of a global batch of ``world · batch``."""

    batch: int
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, acc, batch: int) -> "Shard":
        """The shard of the process an ``accelerate.Accelerator`` runs in."""
        return cls(batch, acc.process_index, acc.num_processes)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    def items(self, step: int) -> list[int]:
        """Global indices of the items this process trains on at ``step``: block ``rank`` of the step's batch."""
        start = (step * self.world + self.rank) * self.batch
        return list(range(start, start + self.batch))

    def take(self, drawn: torch.Tensor) -> torch.Tensor:
        """This process's rows of something drawn for the whole global batch (first dimension ``world · batch``)."""
        return drawn[self.rank * self.batch:(self.rank + 1) * self.batch]

    def fetch(self, ds, step: int) -> dict:
        """The items of :meth:`items` from ``ds``, collated (:func:`collate`); logged if ``COURSE_LOG_ITEMS`` is set."""
        idx = self.items(step)
        debug_log(self.rank, f"items {step} {' '.join(map(str, idx))}")
        return collate([ds[i] for i in idx])

    def batches(self, ds, start: int, stop: int, workers: int = 0, transform: Callable[[dict], dict] | None = None):
        """The batches of :meth:`fetch` for steps ``start .. stop - 1``, in order, made ahead by
        ``workers`` background processes (0: made here, one at a time, exactly like :meth:`fetch`).

        Items are pure functions of their index, so a batch is the same whichever process
        makes it; ``transform`` (e.g. embedding the instructions) runs where the batch is made.
        """
        if workers <= 0:
            for step in range(start, stop):
                batch = self.fetch(ds, step)
                yield transform(batch) if transform else batch
            return
        for step in range(start, stop):
            debug_log(self.rank, f"items {step} {' '.join(map(str, self.items(step)))}")
        loader = torch.utils.data.DataLoader(ds, batch_sampler=[self.items(k) for k in range(start, stop)],
                                             num_workers=workers, collate_fn=_Collate(transform),
                                             worker_init_fn=_one_thread, prefetch_factor=4,
                                             persistent_workers=False)
        yield from loader


class _Collate:
    """:func:`collate` then an optional transform (a class, so that worker processes can pickle it)."""

    def __init__(self, transform: Callable[[dict], dict] | None = None) -> None:
        self.transform = transform

    def __call__(self, items: Sequence[dict]) -> dict:
        batch = collate(items)
        return self.transform(batch) if self.transform else batch


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def debug_log(rank: int, line: str) -> None:
    """Append ``line`` to ``$COURSE_LOG_ITEMS.rank<rank>`` when that variable is set (for the multi-process tests)."""
    log = os.environ.get("COURSE_LOG_ITEMS")
    if log:
        with open(f"{log}.rank{rank}", "a") as f:
            f.write(line + "\n")


def end_processes() -> None:
    """Wait for every process, then close the process group (none outside ``accelerate launch``).

    Every trainer's command ends with this: gloo can abort a process that exits with the group open.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_command(train_fn: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> tuple[Any, float, int]:
    """Run a trainer from its command: ``(result, seconds, exit code)``.

    The errors a trainer expects (a missing file, a bad value, ...) become one ``error:`` line and
    exit code 2; whatever happens, the process group is closed (:func:`end_processes`).
    """
    t0 = time.perf_counter()
    try:
        return train_fn(), time.perf_counter() - t0, 0
    except errors as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return None, time.perf_counter() - t0, 2
    finally:
        end_processes()


def collate(items: Sequence[dict]) -> dict:
    """A list of dataset items -> one dict: tensors stacked along a new first dimension, anything else listed."""
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else [it[k] for it in items] for k in items[0]}


def _distributed(acc) -> bool:
    return acc is not None and acc.num_processes > 1


def average_gradients(acc, params: Sequence[torch.nn.Parameter]) -> None:
    """Average ``params``' gradients over the processes (for models not wrapped by ``acc.prepare``)."""
    if not _distributed(acc):
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


def sync_parameters(acc, params: Sequence[torch.nn.Parameter]) -> None:
    """Give every process the main process's values of ``params`` (what DDP does for prepared models)."""
    if not _distributed(acc):
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def mean_over_processes(acc, values: dict[str, float]) -> dict[str, float]:
    """The mean of each logged number over the processes (unchanged in one process)."""
    if not _distributed(acc) or not values:
        return values
    t = acc.reduce(torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=acc.device),
                   reduction="mean")
    return dict(zip(values, t.tolist()))


class _GatherWithGrad(torch.autograd.Function):
    """All processes' rows, concatenated; the gradient of this process's rows comes back summed over processes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's copy of the loss depends on these rows
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(acc, x: torch.Tensor) -> torch.Tensor:
    """The global batch's rows of ``x`` (process order), differentiable with respect to this process's rows.

    For a loss over the whole batch (InfoNCE's negatives): every process computes the same loss
    on the gathered rows; the gradient of its own rows, summed over processes, then averaged by
    DDP over processes, is the gradient of that one loss.
    """
    return _GatherWithGrad.apply(x) if _distributed(acc) else x


# ----------------------------------------------------------------------------- optimiser state without pickle


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimiser's state for safetensors: ``{"<prefix>state.<param>.<name>": tensor}`` + JSON of the rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{prefix}state.{pid}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = val
    return tensors, json.dumps({"param_groups": sd["param_groups"], "scalars": scalars})


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: str,
                           prefix: str = "") -> None:
    """Inverse of :func:`optimizer_tensors` (``tensors`` may hold other keys: only ``<prefix>state.*`` are read)."""
    info = json.loads(meta)
    state: dict[int, dict] = {}
    for key, val in strip_prefix(tensors, prefix + "state.").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for key, val in info["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix + key: value}``: several state dicts in one file."""
    return {prefix + k: v for k, v in tensors.items()}


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix``, without it (inverse of :func:`with_prefix`)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- resumable state on disk


def state_dir(out: str | os.PathLike) -> Path:
    """``OUT.state/``: the optimiser and progress of a run writing ``OUT``."""
    return Path(str(out) + ".state")


def save_due(step: int, steps: int, every: int) -> bool:
    """Whether a run saves after ``step`` steps: every ``every`` steps and at the last one."""
    return step % max(1, every) == 0 or step == steps


def save_on_main(acc, step: int, steps: int, every: int, save: Callable[[], object]) -> None:
    """Call ``save()`` when a save is due after ``step`` steps (:func:`save_due`), in the main process only."""
    if save_due(step, steps, every) and acc.is_main_process:
        save()
        debug_log(acc.process_index, f"saved {step}")


def write_state(sdir: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], info: dict,
                name: str = "optimizer.safetensors") -> None:
    """Write a run's resumable state into ``sdir``: ``name`` (tensors + string metadata, safetensors)
    and ``state.json`` (``info``), each to a temporary file first, then renamed."""
    from safetensors.torch import save_file

    sdir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(sdir / f"{name}.part"), metadata=metadata)
    os.replace(sdir / f"{name}.part", sdir / name)
    (sdir / "state.json.part").write_text(json.dumps(info))
    os.replace(sdir / "state.json.part", sdir / "state.json")


def has_state(sdir: Path, name: str = "optimizer.safetensors") -> bool:
    """Whether ``sdir`` holds a complete state to resume from."""
    return (sdir / "state.json").is_file() and (sdir / name).is_file()


def read_state(sdir: Path, name: str = "optimizer.safetensors") -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """Inverse of :func:`write_state`: ``(tensors, metadata, info)``.

    Raises:
        FileNotFoundError: ``sdir`` holds no complete state.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not has_state(sdir, name):
        raise FileNotFoundError(f"nothing to resume: {sdir}/state.json and {sdir}/{name} are needed")
    with safe_open(str(sdir / name), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return load_file(str(sdir / name)), metadata, json.loads((sdir / "state.json").read_text())
