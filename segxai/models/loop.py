"""A resumable training loop shared by every trainer (segmenter, localizer, ExplainSeg classifier).

Every `every` steps it writes the whole training state (weights, optimiser, schedule, random generators, step
and losses) atomically to a state file and calls `on_checkpoint` (the trainer writes a usable model there), so an
interrupted run keeps its work. With `resume`, a run continues from that file; because every random draw comes
from the saved generators, a resumed run of the same seed ends with the weights an uninterrupted run ends with.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from segxai.errors import SegxaiError
from segxai.progress import progress_bar

STATE_FORMAT = "segxai-training-state-1"


@dataclass
class Resumable:
    """Where the training state goes (`path`, None = nowhere), how often (`every` steps, 0 = never) and
    whether to continue from it (`resume`; a missing file starts afresh)."""

    path: Path | None = None
    every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if self.every < 0:
            raise SegxaiError(f"checkpoint interval must be 0 (never) or a positive number of steps, not {self.every}")
        if (self.every or self.resume) and self.path is None:
            raise SegxaiError("checkpointing and resuming need a path for the training state")


@dataclass
class Loop:
    """The stateful parts of a training run: modules, optimisers and schedules (`parts`, anything with
    `state_dict`/`load_state_dict`), random generators (`rngs`) and a `signature` of the settings that must
    match for a run to continue another (seed, steps, data sizes, ...). During each step torch's global
    generator (dropout draws from it) runs from `global_rng`'s state, so those draws are seeded and resumed too
    and the caller's global state is left as it was."""

    parts: Mapping[str, Any]
    rngs: Mapping[str, np.random.Generator | torch.Generator]
    signature: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    step: int = 0
    global_rng: torch.Generator | None = None

    def generators(self) -> dict[str, np.random.Generator | torch.Generator]:
        """Every generator whose state a saved training state keeps."""
        return {**self.rngs, **({"torch global": self.global_rng} if self.global_rng is not None else {})}


def run_loop(loop: Loop, train_step: Callable[[int], float], steps: int, saving: Resumable = Resumable(), *,
             on_checkpoint: Callable[[int], None] | None = None, progress: bool = True, desc: str = "training") -> list[float]:
    """Run `train_step(step)` (it returns the step's loss) from the saved step (or 0) up to `steps`.

    Args:
        loop: the stateful parts; its `step` and `losses` are updated.
        train_step: one optimiser step; it draws its randomness from `loop.rngs` only.
        steps: the total number of steps.
        saving: where, how often and whether to resume.
        on_checkpoint: called with the step count after each intermediate state save.
        progress: show a bar with the running loss.
        desc: the bar's label.
    Returns:
        The losses of every step, the resumed ones included.
    """
    if saving.resume and saving.path is not None and Path(saving.path).is_file():
        restore(loop, saving.path)
    status = lambda: "" if not loop.losses else f"loss {np.mean(loop.losses[-10:]):.4f}"
    for step in progress_bar(range(loop.step, steps), enabled=progress, total=steps, initial=loop.step, desc=desc,
                             status=status):
        with _global_torch_rng(loop.global_rng):
            loop.losses.append(float(train_step(step)))
        loop.step = step + 1
        if saving.every and (loop.step % saving.every == 0 or loop.step == steps):
            save_state(loop, saving.path)
            if on_checkpoint is not None and loop.step < steps:  # the trainer writes the final model itself
                on_checkpoint(loop.step)
    return loop.losses


def save_state(loop: Loop, path: str | Path) -> Path:
    """Write the loop's full state atomically (loadable with `torch.load(weights_only=True)`)."""
    from segxai.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": STATE_FORMAT, "signature": json.dumps(loop.signature, sort_keys=True), "step": loop.step,
        "losses": list(loop.losses), "parts": {name: part.state_dict() for name, part in loop.parts.items()},
        "rngs": {name: _rng_state(rng) for name, rng in loop.generators().items()},
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def restore(loop: Loop, path: str | Path) -> None:
    """Load a state written by `save_state` into `loop`; a state of other settings is a clear error."""
    from segxai.models.checkpoint import read_weights

    payload = read_weights(path, "a training state")
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise SegxaiError(f"{path} is not a segxai training state; remove it or drop --resume")
    saved = json.loads(payload["signature"])
    if saved != json.loads(json.dumps(loop.signature, sort_keys=True)):
        differ = sorted(k for k in set(saved) | set(loop.signature) if saved.get(k) != loop.signature.get(k))
        raise SegxaiError(f"{path} was written by a training run with other settings ({', '.join(differ)}); "
                          "run with the same settings, or remove it / drop --resume to start afresh")
    for name, part in loop.parts.items():
        part.load_state_dict(payload["parts"][name])
    for name, rng in loop.generators().items():
        _set_rng_state(rng, payload["rngs"][name])
    loop.step, loop.losses[:] = int(payload["step"]), [float(v) for v in payload["losses"]]


@contextmanager
def _global_torch_rng(generator: torch.Generator | None) -> Iterator[None]:
    """Run the block with torch's global CPU generator in `generator`'s state, then store the advanced state
    back in `generator` and restore the global one (nothing changes without a generator)."""
    if generator is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.get_rng_state())


def _rng_state(rng: np.random.Generator | torch.Generator) -> Any:
    if isinstance(rng, torch.Generator):
        return rng.get_state()
    return json.dumps(rng.bit_generator.state)  # 128-bit integers, kept exactly as text


def _set_rng_state(rng: np.random.Generator | torch.Generator, state: Any) -> None:
    if isinstance(rng, torch.Generator):
        rng.set_state(state)
    else:
        rng.bit_generator.state = json.loads(state)
