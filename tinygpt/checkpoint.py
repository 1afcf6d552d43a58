"""Crash-safe checkpoints: a run's directory holds the previous or the new checkpoint, never half of one.

Layout of an output directory ``DIR``::

    DIR/
      checkpoints/step-00000250/      one complete checkpoint, never modified once written:
        model.safetensors             weights, GPT-2 names ("wte.weight", "h.0.attn.c_attn.weight", ...)
        config.json                   model config (transformers' GPT-2 format) + "tinygpt_model" and
                                      "tinygpt_training" configs
        tokenizer.json                tokenizer.save()
        optimizer.safetensors         AdamW moments: "exp_avg.<name>", "exp_avg_sq.<name>"
        state.json                    step, best val loss, RNG states, optimizer step, file checksums
      latest -> checkpoints/step-00000250          symlink: THE pointer to the current checkpoint
      best -> checkpoints/step-00000150            symlink: the checkpoint of the best evaluation so far
                                                   (train: the lowest val loss), kept while newer ones
                                                   replace one another
      model.safetensors -> latest/model.safetensors   (and the other four files: convenience links, so
                                                       DIR itself reads like a transformers model dir)
      metrics.jsonl, loss.png                     written by the training loop

Why this design: a checkpoint is five files, and replacing five files one ``os.replace`` at a time is not
atomic as a set (a crash between two renames mixes steps). Instead each checkpoint is written into a
fresh temporary directory, every file and the directory are fsynced, the directory is renamed to
``step-N`` (atomic), and then the ``latest`` symlink is swapped in one ``rename(2)`` (atomic on POSIX):
before the swap readers see the old checkpoint, after it the new one; a save that is the best evaluation
so far swaps ``best`` the same way, just after. Only then are older step directories deleted, all but the
two the links name (only names this module writes: anything else the user puts there stays). A crash
at any instant leaves ``latest`` pointing at a complete directory, and ``best`` too (at the previous best
if it fell between the two swaps); stray temporary or older directories are cleaned up by the next save.
``state.json`` is written last and records each file's size and sha256, which :func:`load_checkpoint`
verifies, so damage done later (a truncated copy, a disk error) is reported as a corrupt checkpoint rather
than loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygpt.errors import TinyGPTError
from tinygpt.files import current_umask, loads_json

CHECKPOINT_FILES = (
    "model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors", "state.json"
)
LATEST = "latest"
BEST = "best"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable).

    A file's error is raised: a write refused only at fsync (a full disk or a quota as NFS reports them, an
    I/O error) must fail the save, which then publishes nothing and deletes no older checkpoint. A
    directory's is not: some platforms and file systems cannot open or fsync one, and the renames are still
    atomic there.

    A file is opened for writing, as ``files.atomic_path`` opens its own: Windows' fsync (FlushFileBuffers)
    refuses a read-only descriptor, and that error, now raised, would fail every save there.
    """
    is_dir = path.is_dir()
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if is_dir else os.O_RDWR
    try:
        fd = os.open(path, flags)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def _symlink_atomically(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` in one atomic step: make a temporary symlink, rename it over ``link``."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def checkpoint_path(out_dir: str | os.PathLike) -> Path | None:
    """The current checkpoint's directory in ``out_dir`` (following ``latest``), or None if there is none.

    ``out_dir`` may also be a checkpoint directory itself (one holding ``state.json``).
    """
    out_dir = Path(out_dir)
    latest = out_dir / LATEST
    if latest.is_symlink() or latest.exists():
        try:
            return latest.resolve()
        except (RuntimeError, OSError):  # a link that loops (Python < 3.13 raises; _locate calls it corrupt)
            return latest
    if (out_dir / "state.json").is_file() and not (out_dir / "state.json").is_symlink():
        return out_dir
    return None


# What save_checkpoint puts in checkpoints/: step-N, a re-save of the live step (step-N-PID-XXXXXX) and
# staging directories (.tmp-step-N-XXXXXXXX, mkdtemp's suffix). Only these are ever deleted.
_OUR_CHECKPOINT_ENTRY = re.compile(r"step-\d{8,}(-\d+-\w{6})?|\.tmp-step-\d{8,}-\w+")


def check_new_run_dir(out_dir: str | os.PathLike) -> None:
    """Refuse an output directory whose files a new run would replace or delete (raise TinyGPTError).

    A run writes links named like the checkpoint's five files into ``out_dir`` and, after each save, deletes
    the older ``step-N`` directories of ``out_dir/checkpoints``: in a directory that already holds a
    transformers model or a folder of its own called ``checkpoints``, the user's files would be replaced,
    deleted or mixed with ours. Links (ours) and entries a crashed tinygpt save left behind are fine. (Once
    the run exists, later saves leave alone whatever else the user puts there.)
    """
    out_dir = Path(out_dir)
    if (out_dir / "ckpt.pt").is_file():  # (once our config.json sits beside it, --pretrained reads the
        # directory as a transformers one, and nanoGPT's checkpoint is reachable only by its file's path)
        raise TinyGPTError(f"{out_dir} holds nanoGPT's ckpt.pt (nanoGPT's out_dir is 'out' too): choose "
                           "another --out (nothing was changed)")
    for name in (*CHECKPOINT_FILES, BEST):
        path = out_dir / name
        if path.exists() and not path.is_symlink():
            raise TinyGPTError(f"{out_dir} already holds a {name} that tinygpt did not write; choose another "
                               "--out (nothing was changed)")
    ckpt_root = out_dir / CHECKPOINTS
    if ckpt_root.is_symlink() or (ckpt_root.exists() and not ckpt_root.is_dir()):
        raise TinyGPTError(f"{ckpt_root} is not a directory tinygpt made; choose another --out")
    if ckpt_root.is_dir():
        foreign = [e.name for e in ckpt_root.iterdir() if not _OUR_CHECKPOINT_ENTRY.fullmatch(e.name)]
        if foreign:
            raise TinyGPTError(f"{ckpt_root} holds {foreign[0]!r}, which tinygpt did not write (a run keeps "
                               "its own checkpoints there); choose another --out")
        # a published checkpoint of an earlier run whose `latest` link is gone: the first save would
        # delete it (staging leftovers, named .tmp-step-..., are fair game). A step 0 alone is fair game too:
        # it is what a run killed between its first save's rename and its link swap leaves (train's and
        # finetune's first save is step 0), weights no update has touched, which the new run writes again;
        # refused, that run could be neither started again nor resumed without an `ln -s` by hand
        earlier = sorted(e.name for e in ckpt_root.iterdir() if (e / "state.json").is_file()
                         and not e.name.startswith(".tmp-"))
        if earlier and earlier != [f"step-{0:08d}"]:
            raise TinyGPTError(f"{out_dir} holds the checkpoint {CHECKPOINTS}/{earlier[-1]} of an earlier "
                               f"run but no {LATEST!r} link: to resume it, restore the link (ln -s "
                               f"{CHECKPOINTS}/{earlier[-1]} {out_dir / LATEST}) and pass --resume; "
                               "else choose another --out")


def check_out_holds_no_run(out_dir: str | os.PathLike, classifier: bool) -> None:
    """Refuse (TinyGPTError) a new run into an ``out_dir`` that holds a checkpoint, saying how to go on.

    ``--resume`` is suggested only where it would continue the checkpoint: a run's directory (the one with
    the ``latest`` link) of the same command, ``tinygpt finetune``'s classifier (``classifier``) or
    ``tinygpt train``'s language model. The other command's run (finetune --init-from DIR --out DIR, the
    same DIR) and a checkpoint directory itself are refused by --resume too, so the line does not send the
    user there.
    """
    out_dir = Path(out_dir)
    latest = out_dir / LATEST
    if latest.exists() and not latest.is_symlink():  # the user's own file or folder of that name (or a run
        # copied following links): it said "points to a missing checkpoint: remove that link" of a file, and
        # "DIR is a checkpoint" of a folder of notes
        kind = "directory" if latest.is_dir() else "file"
        raise TinyGPTError(f"{out_dir} already holds a {kind} named {LATEST!r}, not the link a run keeps to "
                           "its current checkpoint (yours, or a run copied following links?); choose another "
                           "--out (nothing was changed)")
    current = checkpoint_path(out_dir)
    if current is None:
        return
    if not current.is_dir():  # a dangling link: --resume cannot continue it either
        raise TinyGPTError(f"{out_dir / LATEST} points to a missing checkpoint: remove that link to start a "
                           "new run there, or choose another --out")
    if not (out_dir / LATEST).is_symlink():
        raise TinyGPTError(f"{out_dir} is a checkpoint (a run's checkpoints/step-N, or a copy of one), not a "
                           "run's directory: choose another --out")
    from tinygpt.finetune import is_classifier_dir

    if is_classifier_dir(out_dir) != classifier:
        held = ("a language model from `tinygpt train`" if classifier else
                "a classifier from `tinygpt finetune`")
        raise TinyGPTError(f"{out_dir} already holds {held}, which this command cannot continue: choose "
                           "another --out")
    raise TinyGPTError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or choose "
                       "another --out")


def check_run_to_resume(out_dir: str | os.PathLike, run: str, overrides: dict) -> None:
    """Refuse (TinyGPTError) what ``--resume`` cannot continue, before its checkpoint is read (``tinygpt
    train``'s and ``tinygpt finetune``'s; ``run`` names the command's run, "training run"): a checkpoint
    directory given for its run's directory (a resumed run writes the run's links, which a checkpoint has
    none of), a ``latest`` or ``best`` that is not our link (refused now, not at the first save), and
    ``--init-from`` or ``--pretrained`` in ``overrides`` (a resumed run continues its own weights)."""
    out_dir = Path(out_dir)
    if not (out_dir / LATEST).is_symlink() and (out_dir / "state.json").is_file():
        raise TinyGPTError(f"{out_dir} is a checkpoint, not a {run}: --resume takes the run's directory (the "
                           f"one with the {LATEST!r} link), which it writes into")
    check_latest_is_a_link(out_dir)
    for name in ("init_from", "pretrained"):
        if overrides.get(name):
            raise TinyGPTError(f"--{name.replace('_', '-')} starts a new run; it cannot be combined with "
                               "--resume")


def check_latest_is_a_link(out_dir: str | os.PathLike) -> None:
    """Refuse (TinyGPTError) a run directory whose ``latest`` or ``best`` is a real directory or file, not
    our link.

    A run copied with ``cp -rL`` (or an archiver that follows links) reads fine, but a save cannot swap a
    link in over a directory: it used to publish its new checkpoint and then fail, on every save of a
    resumed run, after the training time was spent (``tinygpt train --resume`` refuses such a copy before
    training: its top-level files are real files, so it reads as a checkpoint, not a run). A new run's
    directory holding a ``best`` of the user's is refused the same way, before anything is written.
    """
    for name, what in ((LATEST, "the current checkpoint"), (BEST, "the best checkpoint")):
        link = Path(out_dir) / name
        if link.exists() and not link.is_symlink():
            kind = "directory" if link.is_dir() else "file"
            raise TinyGPTError(f"{link} is a {kind}, not the link tinygpt keeps to {what} (a copy that "
                               f"followed links?), so no new checkpoint can be published: make it a link "
                               f"again (rm -r {link} && ln -s {CHECKPOINTS}/step-N {link}) or use another "
                               "--out (nothing was changed)")


def best_checkpoint_name(out_dir: str | os.PathLike) -> str | None:
    """The name in ``checkpoints/`` that ``out_dir/best`` points to (``"step-00000150"``), or None.

    Where the link leads, not how it is spelled: one made by hand (absolute, ``./checkpoints/...``) names
    the same checkpoint, which pruning must keep.
    """
    best = Path(out_dir) / BEST
    if not best.is_symlink():
        return None
    try:
        target = best.resolve()
    except (RuntimeError, OSError):  # a link that loops (Python < 3.13 raises) names no checkpoint
        return None
    if target.parent != (Path(out_dir) / CHECKPOINTS).resolve():
        return None
    return target.name if _OUR_CHECKPOINT_ENTRY.fullmatch(target.name) else None


def repair_best_link(out_dir: str | os.PathLike, state: dict) -> None:
    """Point ``best`` at the current checkpoint when its ``state`` says it is the best (``best_step`` is
    its step) and ``best`` does not: a crash between a save's swap of ``latest`` and its swap of ``best``
    leaves ``best`` at the previous best, which is still there (older checkpoints go only after both
    swaps). A resumed run calls this first, so it ends with the uninterrupted run's ``best``."""
    out_dir = Path(out_dir)
    current = checkpoint_path(out_dir)
    if current is None or state.get("best_step") is None or state.get("best_step") != state.get("step"):
        return
    if best_checkpoint_name(out_dir) != current.name and current.parent == (out_dir / CHECKPOINTS).resolve():
        check_latest_is_a_link(out_dir)
        _symlink_atomically(os.path.join(CHECKPOINTS, current.name), out_dir / BEST)
        _fsync_path(out_dir)


def check_metrics_are_ours(out_dir: Path, first_row_keys: set, with_plot: bool = True) -> None:
    """A new run replaces ``metrics.jsonl`` (and, ``with_plot``, ``loss.png``): only if an earlier run of its
    kind wrote them, which the first row's keys tell (``{"step", "train_loss"}`` for train, ``{"step",
    "epoch"}`` for finetune); else TinyGPTError. Even the run's own --data file could sit there."""
    metrics, plot = out_dir / "metrics.jsonl", out_dir / "loss.png"
    if not metrics.exists() and not (with_plot and plot.exists()):
        return
    try:
        with open(metrics, encoding="utf-8") as f:
            first = loads_json(f.readline() or "{}")
        ours = isinstance(first, dict) and (not first or first_row_keys <= first.keys())
    except (OSError, ValueError):
        ours = False
    if not ours:
        name = "metrics.jsonl" if metrics.exists() else "loss.png"
        raise TinyGPTError(f"{out_dir} already holds a {name} that tinygpt did not write; choose another "
                           "--out (nothing was changed)")


@contextlib.contextmanager
def exclusive_run_dir(out: Path, create: bool):
    """Hold an exclusive lock on a run directory (``flock`` on the directory itself, so no lock file
    appears in it) while a training or fine-tuning run writes it; ``create`` makes a missing one (removed
    again if the run fails before writing anything). Two runs into one --out used to interleave their
    metrics rows and delete each other's checkpoint staging. Where there is no ``fcntl`` (Windows), no lock.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    created = []  # the directories made here, deepest first: removed again if the run writes nothing
    if create and not out.exists():
        missing = out
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        out.mkdir(parents=True)
    if fcntl is None or not out.is_dir():
        yield  # (a missing or non-directory --out is reported by _train, in its words)
        return
    fd = os.open(out, os.O_RDONLY)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TinyGPTError(f"{out} is being written by another tinygpt run; wait for it to finish or "
                               "choose another --out") from None
        locked = True
        yield
    finally:
        if locked:  # (never clean up a directory that another run holds)
            for directory in created:
                if any(directory.iterdir()):
                    break
                directory.rmdir()
        os.close(fd)  # (closing releases the lock)


def _give_usual_permissions(directory: Path) -> None:
    """Give ``directory`` and its files the modes a plain ``mkdir`` / ``open`` would (0777 / 0666 less umask).

    ``tempfile.mkdtemp`` makes the checkpoint's staging directory owner-only (0700), which would make every
    published checkpoint unreadable to the other users of a shared run.
    """
    umask = current_umask()
    os.chmod(directory, 0o777 & ~umask)
    for entry in directory.iterdir():
        os.chmod(entry, 0o666 & ~umask)


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str) -> None:
    """TinyGPTError unless every id of ``tokenizer`` has a row in a model of ``vocab_size`` tokens: a larger
    tokenizer's ids failed only later, at the first one the model has no embedding for. A model padded past
    its tokenizer (nanoGPT's 50304 for GPT-2's 50257) is fine."""
    if tokenizer.vocab_size > vocab_size:
        raise TinyGPTError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, the model only "
                           f"{vocab_size}")


def save_checkpoint(out_dir: str | os.PathLike, model, tokenizer, optimizer, train_config: dict,
                    state: dict, best: bool = False) -> Path:
    """Write a complete checkpoint of step ``state["step"]`` into ``out_dir`` atomically; return its dir.

    ``model`` is a GPT (``.config``, ``.save_pretrained``, which writes host copies of GPU weights),
    ``optimizer`` an AdamW (or None; its ``state_dict`` holds host arrays), ``train_config`` the run's
    training settings (JSON-able), ``state`` the loop state (JSON-able: step, best_val_loss, RNG states).
    ``best``: this is the best evaluation so far, so ``out_dir/best`` points at it from now on (else the
    checkpoint ``best`` names is kept when older ones are deleted).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    step = int(state["step"])
    check_tokenizer_fits(tokenizer, model.config.vocab_size, f"cannot save a checkpoint into {out_dir}")
    current = checkpoint_path(out_dir)
    if current is None:  # the first save into out_dir: make sure it replaces nothing of the user's
        check_new_run_dir(out_dir)
    check_latest_is_a_link(out_dir)  # (after: a new run's `best` of the user's is theirs, not to rm -r)
    ckpt_root = out_dir / CHECKPOINTS
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyGPTError(f"cannot create {ckpt_root}: {exc.strerror or exc}") from exc
    # absolute, as checkpoint_path's answer is: a relative out_dir must still recognise the live checkpoint
    final = ckpt_root.resolve() / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp-step-{step:08d}-"))
    try:
        # 1. every file into a private temporary directory
        model.save_pretrained(tmp)  # model.safetensors + config.json (transformers' GPT-2 format)
        config = json.loads((tmp / "config.json").read_text())
        # transformers' format cannot say bias=False (it saves zero biases): keep our exact config too.
        config["tinygpt_model"] = model.config.to_dict()
        config["tinygpt_training"] = train_config
        _write_json(tmp / "config.json", config)
        tokenizer.save(tmp / "tokenizer.json")
        opt_state = {"step": 0}
        tensors = {}
        if optimizer is not None:
            sd = optimizer.state_dict()
            for key in ("exp_avg", "exp_avg_sq"):
                tensors.update({f"{key}.{name}": np.ascontiguousarray(a) for name, a in sd[key].items()})
            # not AdamW's lr: train and finetune give each step its rate from the schedule (the run's config
            # and the step say it), so the field held the constructor's peak rate, or after a --resume with
            # another --learning-rate the earlier one, and nothing read it (older checkpoints' still load)
            opt_state = {k: v for k, v in sd.items() if k not in ("exp_avg", "exp_avg_sq", "lr")}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        files = {}
        for name in CHECKPOINT_FILES[:-1]:
            _fsync_path(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        full_state = {"format": FORMAT_VERSION, **state, "optimizer": opt_state, "files": files}
        _write_json(tmp / "state.json", full_state)  # last: it vouches for the others
        _fsync_path(tmp / "state.json")
        _give_usual_permissions(tmp)
        _fsync_path(tmp)
        # 2. publish the directory under its final name (atomic rename)
        live = final == current or final.name == best_checkpoint_name(out_dir)
        if final.exists() and not live:
            shutil.rmtree(final)  # leftover of a crash after the rename but before the pointer swap
        if live:
            # Re-saving a step a link names (latest, or best after an earlier re-save moved latest on):
            # publish under a new name, never touch the checkpoint the link names.
            final = ckpt_root / f"step-{step:08d}-{os.getpid()}-{tmp.name[-6:]}"
        os.rename(tmp, final)
        _fsync_path(ckpt_root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):  # a full disk, a file-size limit, an I/O error
            # (a run's first save has no earlier checkpoint to fall back on: saying one was intact sent the
            # user looking for it)
            kept = "the previous checkpoint is intact" if current is not None else "no checkpoint was saved"
            raise TinyGPTError(f"could not write the checkpoint of step {step} into {ckpt_root} ({exc}); "
                               f"{kept}") from exc
        raise
    # 3. swap the pointer (atomic): from here on readers see the new checkpoint
    _symlink_atomically(os.path.join(CHECKPOINTS, final.name), out_dir / LATEST)
    if best:  # (a crash just before this leaves the previous best named: see repair_best_link)
        _symlink_atomically(os.path.join(CHECKPOINTS, final.name), out_dir / BEST)
    elif current is None and best_checkpoint_name(out_dir) is not None:
        (out_dir / BEST).unlink()  # an earlier run's, in a directory it left no checkpoint in: not this run's
    for name in CHECKPOINT_FILES:  # convenience links, identical every time
        link = out_dir / name
        if not link.is_symlink() and not link.exists():  # a file the user put there since is theirs: kept
            _symlink_atomically(os.path.join(LATEST, name), link)
    _fsync_path(out_dir)
    # 4. only now delete older checkpoints (but the best) and any temporary directories a crash left behind;
    # anything else in checkpoints/ (a user's note, a copy they made under another name) is not ours to delete
    keep = {final.name, best_checkpoint_name(out_dir)}
    for entry in ckpt_root.iterdir():
        if entry.name not in keep and _OUR_CHECKPOINT_ENTRY.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    """Everything :func:`load_checkpoint` reads back."""

    path: Path  # the checkpoint directory (DIR/checkpoints/step-N)
    model: object  # GPT
    tokenizer: object
    optimizer_state: dict  # AdamW.load_state_dict input
    train_config: dict
    state: dict  # step, best_val_loss, RNG states, ...


def _read_json(path: Path) -> dict:
    try:
        obj = loads_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise TinyGPTError(f"corrupt checkpoint: cannot read {path.name} in {path.parent} ({exc})") from None
    if not isinstance(obj, dict):
        raise TinyGPTError(f"corrupt checkpoint: {path} is not a JSON object")
    return obj


def _locate(out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.exists():
        raise TinyGPTError(f"no checkpoint: directory {out_dir} does not exist")
    if not out_dir.is_dir():
        raise TinyGPTError(f"no checkpoint: {out_dir} is not a directory")
    path = checkpoint_path(out_dir)
    if path is None:
        if (out_dir / "config.json").is_file():  # a model, but not a tinygpt run
            raise TinyGPTError(f"no checkpoint in {out_dir} (no 'latest' link or state.json): it looks like "
                               "a transformers GPT-2 directory, which train, finetune and sample take as "
                               "--pretrained")
        if (out_dir / "ckpt.pt").is_file():  # nanoGPT's out_dir (whose default name is also "out")
            raise TinyGPTError(f"no checkpoint in {out_dir} (no 'latest' link or state.json): it looks like "
                               "nanoGPT's out_dir, whose ckpt.pt sample, eval, train and finetune take as "
                               "--pretrained")
        raise TinyGPTError(f"no checkpoint in {out_dir} (no 'latest' link or state.json); train one first")
    if not path.is_dir():
        what = "a file, not a checkpoint directory" if path.exists() else "a missing directory"
        raise TinyGPTError(f"corrupt checkpoint: {out_dir / LATEST} points to {what}")
    return path


def _verify(path: Path) -> dict:
    """Read state.json and check every file it vouches for: present, right size, right sha256."""
    state = _read_json(path / "state.json")
    if not isinstance(state, dict):
        raise TinyGPTError(f"corrupt checkpoint: {path / 'state.json'} is not a JSON object")
    files = state.get("files")
    if not isinstance(files, dict) or set(files) != set(CHECKPOINT_FILES[:-1]):
        raise TinyGPTError(f"corrupt checkpoint: {path / 'state.json'} lacks the file list")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise TinyGPTError(f"corrupt checkpoint: {file} is missing")
        if not isinstance(expected, dict) or file.stat().st_size != expected.get("bytes") \
                or _sha256(file) != expected.get("sha256"):
            raise TinyGPTError(f"corrupt checkpoint: {file} does not match its recorded size/sha256")
    # state.json itself carries no checksum: check what resuming reads from it
    where = path / "state.json"
    if state.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise TinyGPTError(f"{where} is checkpoint format {state['format']!r}; this tinygpt reads format "
                           f"{FORMAT_VERSION}")
    if not _is_count(state.get("step")):
        raise TinyGPTError(f"corrupt checkpoint: {where} has no valid step")
    for key in ("sampler_rng", "dropout_rng"):
        if key in state and state[key] is not None and not isinstance(state[key], dict):
            raise TinyGPTError(f"corrupt checkpoint: {where} has a malformed {key}")
    checks = {"tokens_seen": _is_count, "elapsed": lambda v: _is_number(v) and v >= 0,
              "best_val_loss": lambda v: v is None or _is_number(v), "best_step": lambda v: v is None or
              _is_count(v)}
    for key, valid in checks.items():
        if key in state and not valid(state[key]):
            raise TinyGPTError(f"corrupt checkpoint: {where} has an invalid {key} ({state[key]!r})")
    optimizer = state.get("optimizer", {})
    if not isinstance(optimizer, dict) or not _is_count(optimizer.get("step", 0)):
        raise TinyGPTError(f"corrupt checkpoint: {where} has an invalid optimizer step")
    # AdamW's own rule, eps >= 0 (as torch's): an AdamW(eps=0) run must load back what it saved
    if "eps" in optimizer and not (_is_number(optimizer["eps"]) and optimizer["eps"] >= 0):
        raise TinyGPTError(f"corrupt checkpoint: {where} has an invalid optimizer eps ({optimizer['eps']!r})")
    return state


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_gpt(path: Path, config: dict, dtype, backend: str):
    """The GPT in a checkpoint directory, with exactly the parameters it was trained with."""
    from safetensors.numpy import load_file

    from tinygpt.model import GPT, GPTConfig, param_shapes

    if "tinygpt_model" not in config:  # a plain transformers GPT-2 directory
        return GPT.from_pretrained(path, dtype=dtype, backend=backend)
    model_config = GPTConfig.from_dict(config["tinygpt_model"])
    tensors = load_file(str(path / "model.safetensors"))
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    expected = param_shapes(model_config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise TinyGPTError(f"model.safetensors lacks {missing[0]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise TinyGPTError(f"{name} has shape {tensors[name].shape}, the config says {shape}")
    # the GPT puts the weights where its backend computes (the GPU for "cuda"); extra tensors such as a
    # classifier's head are not the GPT's
    params = {name: tensors[name] for name in expected}
    return GPT(model_config, seed=0, dtype=dtype, backend=backend, params=params)


# what a run whose checkpoint holds NaN or inf weights can do (an earlier one kept: DIR/best, say)
NON_FINITE_REMEDY = "use an earlier checkpoint or train again"


def load_model(out_dir: str | os.PathLike, backend: str = "numpy", dtype=np.float32):
    """``(GPT, tokenizer)`` from a training output directory (or a checkpoint directory inside it), to
    sample or score: weights holding a NaN or an infinity are refused (``model.check_finite_weights``)."""
    from tinygpt.model import check_finite_weights

    ckpt = load_checkpoint(out_dir, backend=backend, dtype=dtype, with_optimizer=False)
    check_finite_weights(ckpt.model, f"the checkpoint {ckpt.path}", NON_FINITE_REMEDY)
    return ckpt.model, ckpt.tokenizer


def load_checkpoint(out_dir: str | os.PathLike, backend: str | None = None, dtype=np.float32,
                    with_optimizer: bool = True) -> Checkpoint:
    """The current checkpoint of ``out_dir``, verified; missing or corrupt -> TinyGPTError.

    ``backend=None`` uses the backend the run was trained with (backends agree only to rounding, so an
    exact resume must keep it), or "numpy" for a checkpoint that does not record one.

    A run that is still training publishes a new checkpoint and then deletes the old one, possibly while
    this reads it: a read that fails after ``latest`` has moved on is retried on the new checkpoint, so a
    reader sees the old one or the new one, never a false "corrupt checkpoint".
    """
    for attempt in range(5):
        before = checkpoint_path(out_dir) if Path(out_dir).is_dir() else None
        try:
            return _load_checkpoint_once(out_dir, backend, dtype, with_optimizer)
        except (TinyGPTError, OSError) as exc:  # (OSError: a file deleted between its checks and its read)
            if attempt < 4 and before is not None and checkpoint_path(out_dir) != before:
                continue  # a newer checkpoint was published meanwhile: read that one
            if isinstance(exc, TinyGPTError):
                raise  # corrupt indeed
            raise TinyGPTError(f"corrupt checkpoint in {out_dir}: {exc}") from None


def _load_checkpoint_once(out_dir, backend, dtype, with_optimizer) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from tinygpt.kernels import get_ops
    from tinygpt.tokenizer import load_tokenizer

    path = _locate(out_dir)
    state = _verify(path)
    config = _read_json(path / "config.json")
    train_config = config.get("tinygpt_training", {})
    if backend is None:
        backend = train_config.get("backend", "numpy") if isinstance(train_config, dict) else "numpy"
    get_ops(backend)  # an unknown or unavailable backend is reported as such, not as a corrupt checkpoint
    try:
        model = _load_gpt(path, config, dtype, backend)
    except TinyGPTError as exc:
        raise TinyGPTError(f"corrupt checkpoint in {path}: {exc}") from None
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise TinyGPTError(f"corrupt checkpoint: cannot load the model from {path} ({exc})") from None
    try:
        tokenizer = load_tokenizer(str(path / "tokenizer.json"))
    except (OSError, ValueError, KeyError) as exc:
        raise TinyGPTError(f"corrupt checkpoint: cannot load {path / 'tokenizer.json'} ({exc})") from None
    check_tokenizer_fits(tokenizer, model.config.vocab_size, f"corrupt checkpoint in {path}")
    optimizer_state = dict(state.get("optimizer", {}))
    if with_optimizer:
        try:
            tensors = load_file(str(path / "optimizer.safetensors"))
        except (OSError, ValueError, SafetensorError) as exc:
            raise TinyGPTError(f"corrupt checkpoint: cannot load optimizer.safetensors ({exc})") from None
        for key in ("exp_avg", "exp_avg_sq"):
            prefix = key + "."
            optimizer_state[key] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return Checkpoint(path, model, tokenizer, optimizer_state, train_config, state)
