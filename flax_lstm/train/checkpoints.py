"""The run folder's files: atomic JSON (``config.json``, ``metrics.json``) and orbax checkpoints.

Every file is written through a temporary file and an atomic rename, and every checkpoint is
committed by orbax, so a run that dies leaves the last complete checkpoint and nothing else.
orbax is imported when a checkpoint is opened, not with this module.

orbax, matplotlib and tqdm are the ``train`` extra (``pip install 'flax-lstm[train]'``), not
requirements of the library: `require_train_extra` names the extra where one is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from flax_lstm.train.config import TrainConfig, TrainError

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "Checkpoints",
    "atomic_write",
    "load_run_config",
    "read_run_json",
    "require_train_extra",
    "write_json",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
# The modules the training application imports when it needs them, and their distributions:
# the ``train`` extra.
TRAIN_EXTRA = {"orbax.checkpoint": "orbax-checkpoint", "matplotlib": "matplotlib", "tqdm": "tqdm"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or one set to None
        return False


def require_train_extra() -> None:
    """`TrainError` naming the ``train`` extra where a library of it is not installed.

    Checked before a run writes anything, so that ``flax-lstm train`` stops with one line
    rather than a traceback from deep in a run.
    """
    missing = [dist for module, dist in TRAIN_EXTRA.items() if not _installed(module)]
    if missing:
        raise TrainError(
            f"training needs {', '.join(missing)}, which the library does not install: "
            "pip install 'flax-lstm[train]'"
        )


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def read_run_json(run: str | os.PathLike, name: str = CONFIG_FILE) -> Any:
    """The JSON file ``name`` of the run folder ``run``; `TrainError` if missing or unreadable."""
    path = Path(run) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainError(f"{path.parent}: no {path.name}; not a flax-lstm run folder") from None
    except (OSError, ValueError) as e:
        raise TrainError(f"{path}: unreadable ({e})") from None


def load_run_config(run: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` a run folder was trained with."""
    return TrainConfig.from_dict(read_run_json(run)["train_config"])


class Checkpoints:
    """Orbax checkpoints of a run folder, one item each: ``state`` (to resume), ``model`` (the
    selected parameters) and ``meta`` (JSON: the loop's bookkeeping).

    ``create=False`` opens an existing folder; `latest` is None when it holds no committed
    checkpoint (an interrupted save leaves only a temporary folder, which orbax ignores).
    """

    def __init__(self, run_dir: Path, create: bool) -> None:
        require_train_extra()
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.run_dir = run_dir
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=create, enable_async_checkpointing=False
        )
        directory = (run_dir / CHECKPOINT_DIR).absolute()
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, model: Any, meta: dict[str, Any]) -> None:
        args = self.ocp.args
        self.manager.save(
            epoch,
            args=args.Composite(
                state=args.StandardSave(state),
                model=args.StandardSave(model),
                meta=args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, epoch: int, **abstract: Any) -> dict[str, Any]:
        """``meta`` and the items named in ``abstract`` (their shapes, dtypes and shardings).

        A damaged or foreign checkpoint is a one-line `TrainError`.
        """
        args = self.ocp.args
        items = {k: args.StandardRestore(v) for k, v in abstract.items()}
        try:
            restored = self.manager.restore(
                epoch, args=args.Composite(meta=args.JsonRestore(), **items)
            )
        except Exception as e:  # orbax/tensorstore errors: a damaged or foreign checkpoint
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            message = f"{self.run_dir}: cannot restore checkpoint {epoch}: {first}"
            raise TrainError(message) from None
        return {k: restored[k] for k in ("meta", *abstract)}

    def close(self) -> None:
        self.manager.close()


@contextlib.contextmanager
def open_latest(run_dir: Path, missing: str):
    """``(checkpoints, latest epoch)`` of an existing run folder; ``missing`` is the
    `TrainError` message when it holds no checkpoint. Closes the manager on exit."""
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        raise TrainError(missing)
    ckpts = Checkpoints(run_dir, create=False)
    try:
        last = ckpts.latest()
        if last is None:
            raise TrainError(missing)
        yield ckpts, last
    finally:
        ckpts.close()
