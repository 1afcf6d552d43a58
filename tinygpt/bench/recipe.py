"""``tinygpt bench recipe``: a whole training run of a preset, tinygpt against nanoGPT's PyTorch loop.

nanoGPT itself is not a package we can install here, so the peer is nanoGPT's recipe rebuilt in plain
PyTorch in this file (``nanogpt_style_run``): the same architecture as nanoGPT's ``model.py`` (pre-LN
blocks, fused c_attn, ``F.scaled_dot_product_attention(is_causal=True)``, exact-erf GELU (``F.gelu``, as
nanoGPT's ``nn.GELU()``), tied LM head, GPT-2 init with the scaled residual projections, optional biases)
and the same loop as its ``train.py`` (AdamW with weight decay on 2-D tensors only, warmup + cosine learning
rate, gradient clipping, ``estimate_loss`` over ``eval_iters`` random batches of each split every
``eval_interval`` steps, a checkpoint when the val loss improves). Both sides read the preset (``--config``,
default ``shakespeare_char``: nanoGPT's CPU command line), tokenize the text per character, split it 90/10
and train from scratch (a config with dropout, gradient accumulation, a starting checkpoint or HellaSwag
scoring is refused unless ``--no-peer``: the peer's loop has none of them); the table gives each side's
wall time (data preparation included), its final train and val loss as nanoGPT reports them (means over
``eval_iters`` random batches, which move by a few hundredths with the batches drawn), and its final
model's loss on the whole val split (every non-overlapping window, as ``tinygpt eval`` measures; not
timed), which does not.

Run it on the tiny-shakespeare file that nanoGPT's published figures use::

    tinygpt bench recipe --data ../shared/data/tinyshakespeare.txt

The two runs go one after the other (not interleaved: each is minutes long), ours first, both with freed
memory kept for reuse (``tinygpt.train.retain_freed_memory``), as ``tinygpt train`` runs.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from tinygpt.bench import blas_threads, decay_matrices_only
from tinygpt.errors import TinyGPTError


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="UTF-8 text file, trained on per character")
    parser.add_argument("--config", default="shakespeare_char", help="preset or TOML file (shakespeare_char)")
    parser.add_argument("--max-iters", type=int,
                        help="override the preset's max_iters (and lr_decay_iters; warmup <= 1/10 of it)")
    parser.add_argument("--eval-interval", type=int, help="override the preset's eval_interval")
    parser.add_argument("--seed", type=int, default=1337, help="both sides' seed (nanoGPT's 1337)")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch side")


def _settings(args) -> dict:
    from tinygpt.train import make_config, read_config_file

    values = read_config_file(args.config)
    values.update(data=str(args.data), tokenizer="char", seed=args.seed)
    if args.max_iters is not None:  # a shorter run (a smoke test): the schedule shrinks with it
        warmup = min(values.get("warmup_iters", 0), args.max_iters // 10)
        values.update(max_iters=args.max_iters, lr_decay_iters=args.max_iters, warmup_iters=warmup)
    if args.eval_interval is not None:
        values["eval_interval"] = args.eval_interval
    return make_config(values).to_dict()


def tinygpt_run(settings: dict, out_dir: str) -> dict:
    """``tinygpt train`` with these settings into ``out_dir``: wall seconds and the last evaluation."""
    from tinygpt.train import evaluate, make_config, read_metrics, train

    cfg = make_config({**settings, "out": out_dir})
    start = time.perf_counter()
    train(cfg, quiet=True)
    seconds = time.perf_counter() - start  # the whole-split evaluation below is not timed
    last = read_metrics(Path(out_dir) / "metrics.jsonl")[-1]
    whole = evaluate(out_dir, data=settings["data"], split="val", backend=settings["backend"])
    return {"seconds": seconds, "step": last["step"], "train_loss": last["train_loss"],
            "val_loss": last["val_loss"], "val_loss_whole": whole["loss"]}  # fmt: skip


def _nanogpt_style_model(torch, vocab_size, block_size, n_layer, n_head, n_embd, bias):
    """nanoGPT's GPT in a few lines of PyTorch: (idx, targets) -> mean cross-entropy."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
            self.attn_c_proj = nn.Linear(n_embd, n_embd, bias=bias)
            self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
            self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
            self.mlp_c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(n_embd, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.attn_c_proj(y)
            return x + self.mlp_c_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab_size, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, bias=bias)
            for name, p in self.named_parameters():  # GPT-2's init, as nanoGPT does it
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "ln_" in name:
                    nn.init.ones_(p)
                else:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, mean=0.0, std=std)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # the LM head tied to wte
            return F.cross_entropy(logits.view(-1, vocab_size), targets.view(-1))

    return GPT()


def nanogpt_style_run(settings: dict, out_dir: str, threads: int) -> dict:
    """nanoGPT's training loop in PyTorch with these settings: wall seconds and the last evaluation."""
    try:
        import torch
    except ImportError:
        raise TinyGPTError("the peer side needs PyTorch (pip install torch); use --no-peer") from None
    from tinygpt.data import VAL_FRACTION, iter_eval_windows, read_text, train_split_size
    from tinygpt.optim import lr_at

    s = settings
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(s["seed"])
    text = read_text(s["data"])  # as ours reads it: no newline translation ("\r\n" stays two characters)
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}  # nanoGPT's prepare.py: sorted characters
    ids = torch.from_numpy(np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text)))
    # ours' 90/10 cut (it rounds: nanoGPT's int(0.9 n) can cut one token earlier, and the val split's windows
    # would then all be other windows than the ones ours is measured on)
    n_train = train_split_size(len(ids), VAL_FRACTION)
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    B, T = s["batch_size"], s["block_size"]

    def get_batch(split):
        data = splits[split]
        starts = torch.randint(len(data) - T, (B,))
        x = torch.stack([data[i:i + T] for i in starts.tolist()])
        y = torch.stack([data[i + 1:i + 1 + T] for i in starts.tolist()])
        return x, y

    model = _nanogpt_style_model(torch, len(chars), T, s["n_layer"], s["n_head"], s["n_embd"], s["bias"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decay_matrices_only(params, s["weight_decay"]), lr=s["learning_rate"],
                                  betas=(s["beta1"], s["beta2"]))
    decay_iters = s["lr_decay_iters"] if s["lr_decay_iters"] is not None else s["max_iters"]

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {split: float(np.mean([model(*get_batch(split)).item() for _ in range(s["eval_iters"])]))
               for split in ("train", "val")}  # fmt: skip
        model.train()
        return out

    best_val, last = float("inf"), None
    for step in range(s["max_iters"] + 1):
        lr = lr_at(step, s["learning_rate"], s["warmup_iters"], decay_iters, s["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step % s["eval_interval"] == 0 or step == s["max_iters"]:
            last = {"step": step, **estimate_loss()}
            if last["val"] < best_val and step > 0:
                best_val = last["val"]
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                           Path(out_dir) / "ckpt.pt")
        if step == s["max_iters"]:
            break
        loss = model(*get_batch("train"))
        loss.backward()
        if s["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start

    # The final model on every non-overlapping window of the val split, as tinygpt eval measures ours
    model.eval()
    val_windows = iter_eval_windows(splits["val"].numpy(), T, 32)
    nats, n_targets = 0.0, 0
    with torch.no_grad():
        for x, y in val_windows:
            nats += float(model(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x, y)))) * y.size
            n_targets += y.size
    return {"seconds": seconds, "step": last["step"], "train_loss": last["train"], "val_loss": last["val"],
            "val_loss_whole": nats / n_targets}  # fmt: skip


def run(args):
    if Path(args.data).is_dir():  # (it said "no such file")
        raise TinyGPTError(f"--data {args.data} is a directory: the recipe trains on a text file")
    if Path(args.data).exists() and not Path(args.data).is_file():  # both sides read it: a pipe gives its
        # text once
        raise TinyGPTError(f"--data {args.data} is not a regular file (a pipe, a socket or a device): both "
                           "sides read it, so give a text file")
    if not Path(args.data).is_file():
        raise TinyGPTError(f"--data {args.data}: no such file")
    for name in ("max_iters", "eval_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise TinyGPTError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    settings = _settings(args)
    from tinygpt.data import read_text

    read_text(settings["data"])  # an empty, binary or non-UTF-8 file: one line before the recipe's header
    # what the PyTorch side does not do: racing it would compare two different trainings
    # (hellaswag: ours would score the file at every evaluation, inside its timed run, and the peer never)
    unmatched = [f"{name} = {settings[name]!r}" for name, plain in (("dropout", 0.0), ("grad_accum_steps", 1),
                 ("init_from", None), ("pretrained", None), ("hellaswag", None)) if settings[name] != plain]
    if unmatched and not args.no_peer:
        raise TinyGPTError(f"{args.config}: {', '.join(unmatched)} is not in the PyTorch side's loop (no "
                           "dropout, one batch a step, from scratch, no HellaSwag): set it off, or use "
                           "--no-peer")
    from tinygpt.train import retain_freed_memory

    retain_freed_memory()  # as `tinygpt train` runs; process-wide, so the peer's run after ours gets it too
    threads = blas_threads()
    s = settings
    print(f"recipe {args.config}: {s['n_layer']}L/{s['n_head']}H/{s['n_embd']}d, block {s['block_size']}, "
          f"batch {s['batch_size']}, {s['max_iters']} steps, eval every {s['eval_interval']} over "
          f"{s['eval_iters']} batches; {Path(s['data']).name}, per character; {threads} thread(s); "
          f"seed {s['seed']}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours = tinygpt_run(settings, str(Path(tmp) / "tinygpt"))
        rows.append(("tinygpt (tinygpt train)", ours))
        if not args.no_peer:
            (Path(tmp) / "torch").mkdir()
            rows.append(("PyTorch, nanoGPT's loop", nanogpt_style_run(settings, str(Path(tmp) / "torch"),
                                                                      threads)))
    header = (f"{'side':<26} {'wall s':>8} {'step':>6} {'train loss':>11} {'val loss':>9} "
              f"{'val (whole)':>12} {'time vs peer':>13}")  # fmt: skip
    print(header)
    print("-" * len(header))
    peer_seconds = rows[-1][1]["seconds"] if len(rows) > 1 else None
    for side, r in rows:
        ratio = f"{r['seconds'] / peer_seconds:.2f}x" if peer_seconds else "-"
        print(f"{side:<26} {r['seconds']:>8.1f} {r['step']:>6} {r['train_loss']:>11.4f} "
              f"{r['val_loss']:>9.4f} {r['val_loss_whole']:>12.4f} {ratio:>13}")  # fmt: skip
    print("train and val loss: the mean over eval_iters random batches, as nanoGPT reports them (each side "
          "draws its own); val (whole): the final model on every non-overlapping window of the val split")
    return 0
