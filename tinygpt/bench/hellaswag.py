"""``tinygpt bench hellaswag``: HellaSwag scoring examples/s, tinygpt's two paths against transformers.

Three sides score the same examples with the same weights, each ending's summed and mean log-likelihood:

- tinygpt, shared context: ``hellaswag.score(model, tokens, mask)``, the context once (batch 1, into a KV
  cache) and the endings as one batch over its keys and values (what ``tinygpt eval --hellaswag`` runs);
- tinygpt, rows: ``hellaswag.score(..., share_context=False)``, the E padded rows of context + ending as one
  forward (what it ran before);
- transformers: ``GPT2LMHeadModel`` scoring each example as build-nanogpt's ``hellaswag.py`` does: the padded
  (E, L) rows as one batch under ``torch.no_grad()`` in float32, the logits of every position, a per-token
  cross-entropy against the next token, summed (and averaged) over the ending's tokens; PyTorch CPU with
  ``torch.set_num_threads`` equal to NumPy's BLAS thread count, as the other benches set it.

The model is GPT-2 small's shape (12 layers, 12 heads, 768 wide, vocabulary 50257, block 1024), initialised
by transformers (GPT-2's init), or ``--pretrained PATH`` (a transformers GPT-2 directory or a nanoGPT
checkpoint, loaded as ``tinygpt eval --pretrained`` loads it; the peer is given its weights). The examples
are synthetic by default: a seeded generator draws HellaSwag-shaped items of random token ids, each context's
length uniformly from m - m // 2 to m + m // 2 for m = ``--context-tokens`` (40: 20 to 60 tokens), and each
of ``--endings`` (4) endings' likewise around ``--ending-tokens`` (25: 13 to 37), about the sizes of
HellaSwag's val split in GPT-2's tokens; their labels are random, so the accuracies printed are chance.
``--hellaswag FILE`` takes a real file's first ``--limit`` examples instead, read and tokenized as ``tinygpt
eval --hellaswag`` does (with ``--pretrained``'s tokenizer, else GPT-2's).

examples/s = examples / the side's summed wall time of scoring them (tokenizing is not timed). The sides
alternate example by example, each first scoring one example untimed (allocator, BLAS threads, a compiled
kernel), so that other load on the machine slows all of them alike. The last lines check the predictions:
on how many examples each of our sides picks the same ending as transformers, by the summed (acc) and by
the mean (acc_norm) log-likelihood, and the largest difference of the log-likelihoods themselves.
"""

from __future__ import annotations

import time

import numpy as np

from tinygpt.bench import blas_threads, import_torch_peer, inference_peer_config
from tinygpt.errors import TinyGPTError

SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "block_size": 1024}  # GPT-2 small


def add_arguments(parser):
    parser.description = (
        "HellaSwag scoring examples/s: tinygpt sharing each example's context, tinygpt scoring its padded "
        "rows, and transformers' GPT2LMHeadModel scoring the padded rows as build-nanogpt's hellaswag.py "
        "does, with the same weights. Default: GPT-2 small's shape, randomly initialised, and 100 synthetic "
        "examples of random ids shaped like HellaSwag's val split in GPT-2's tokens: contexts of 20 to 60 "
        "tokens (mean 40), 4 endings of 13 to 37 (mean 25), random labels.")
    parser.add_argument("--n-layer", type=int, help="transformer blocks (12, GPT-2 small's)")
    parser.add_argument("--n-head", type=int, help="attention heads (12)")
    parser.add_argument("--n-embd", type=int, help="width C (768)")
    parser.add_argument("--vocab-size", type=int, help="vocabulary V (50257, GPT-2's)")
    parser.add_argument("--block-size", type=int, help="context length (1024)")
    parser.add_argument("--gelu", choices=("tanh", "erf"), help="the random model's GELU: GPT-2's tanh form "
                        "(tanh, the default), or x Phi(x), nanoGPT's (erf)")
    parser.add_argument("--pretrained", metavar="PATH", help="a transformers GPT-2 directory or a nanoGPT "
                        "checkpoint instead of a random model of the shape above")
    parser.add_argument("--hellaswag", metavar="FILE", help="score this HellaSwag .jsonl file's examples "
                        "(hellaswag_val.jsonl) instead of synthetic ones")
    parser.add_argument("--limit", type=int, default=100, help="examples scored (100): the file's first N, "
                        "or N synthetic ones")
    parser.add_argument("--context-tokens", type=int, default=40, help="synthetic examples: the mean "
                        "context length m in tokens, each drawn uniformly from m - m//2 to m + m//2 (40: 20 "
                        "to 60)")
    parser.add_argument("--ending-tokens", type=int, default=25, help="synthetic examples: the mean ending "
                        "length, drawn so too (25: 13 to 37)")
    parser.add_argument("--endings", type=int, default=4, help="synthetic examples: endings each (4)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic examples' and the model's (0)")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers (tinygpt figures only)")
    parser.add_argument("--backend", choices=("numpy", "numba"), default="numba",
                        help="tinygpt's backend, as `tinygpt eval --backend` (numba)")


def span(mean: int) -> tuple[int, int]:
    """The fewest and most tokens of a synthetic context or ending of this mean length: m -/+ m // 2."""
    return max(1, mean - mean // 2), mean + mean // 2


def synthetic_examples(n, vocab_size, context_tokens=40, ending_tokens=25, endings=4, seed=0):
    """``n`` HellaSwag-shaped examples of random ids, as ``hellaswag.render`` lays one out: a list of
    (tokens (E, L) int64, mask (E, L) bool, label). Each context's length is drawn uniformly from
    ``span(context_tokens)``, each ending's from ``span(ending_tokens)``."""
    rng = np.random.default_rng(seed)

    def length(mean):
        low, high = span(mean)
        return int(rng.integers(low, high + 1))

    examples = []
    for _ in range(n):
        context = rng.integers(0, vocab_size, length(context_tokens))
        ends = [rng.integers(0, vocab_size, length(ending_tokens)) for _ in range(endings)]
        width = len(context) + max(map(len, ends))
        tokens = np.zeros((endings, width), dtype=np.int64)
        mask = np.zeros((endings, width), dtype=bool)
        for i, ending in enumerate(ends):
            tokens[i, : len(context)] = context
            tokens[i, len(context) : len(context) + len(ending)] = ending
            mask[i, len(context) : len(context) + len(ending)] = True
        examples.append((tokens, mask, int(rng.integers(endings))))
    return examples


def peer_model(torch, transformers, params, config):
    """transformers' GPT2LMHeadModel holding ``params`` (tinygpt's GPT-2 names; a bias tinygpt's model lacks,
    as nanoGPT's bias=False checkpoints do, is zero), float32, in eval mode."""
    hf_config = inference_peer_config(transformers, config)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            name = "wte.weight" if key == "lm_head.weight" else key.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):  # (older transformers' mask buffers)
                continue
            if name in params:
                value = np.asarray(params[name], dtype=np.float32)[: tensor.shape[0]]  # (wpe: block_size)
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
            else:
                tensor.zero_()
    return model


def peer_score(torch, model, tokens, mask):
    """build-nanogpt's hellaswag.py scoring of one example: the (E, L) rows through the model, a per-token
    cross-entropy of each position but the last against the next token, kept at the ending's tokens ->
    (summed, mean) log-likelihood per ending, float64 NumPy arrays."""
    F = torch.nn.functional
    tokens, mask = torch.from_numpy(tokens), torch.from_numpy(mask)
    # a row cut to fit (render's block_size + 1 tokens) is one past the model's positions: its last token,
    # only predicted, is not read (build-nanogpt's rows never reach GPT-2's 1024; the logits it would add
    # predict nothing scored)
    inputs = tokens if tokens.shape[1] <= model.config.n_positions else tokens[:, :-1]
    with torch.no_grad():
        logits = model(inputs).logits[:, : tokens.shape[1] - 1]  # (E, L-1, V) the positions before the last
        losses = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        scored = mask[:, 1:].to(losses.dtype)  # (E, L-1) the positions that predict an ending token
        summed = (losses.view(scored.shape) * scored).sum(dim=1)
        mean = summed / scored.sum(dim=1)
    return -summed.double().numpy(), -mean.double().numpy()


def _shape(args) -> dict:
    """The random model's shape: the flags given, GPT-2 small's for the rest."""
    return {name: SHAPE[name] if getattr(args, name) is None else getattr(args, name) for name in SHAPE}


def _check(args) -> None:
    given = [f"--{name.replace('_', '-')}" for name in (*SHAPE, "gelu") if getattr(args, name) is not None]
    if args.pretrained is not None and given:
        raise TinyGPTError(f"{given[0]} sets the random model's shape; --pretrained PATH has its own")
    if args.pretrained is not None and not args.pretrained:
        raise TinyGPTError("--pretrained needs a path: a transformers GPT-2 directory or a nanoGPT "
                           "checkpoint")
    for flag in ("limit", "endings", "context_tokens", "ending_tokens", *SHAPE):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise TinyGPTError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.endings < 2:
        raise TinyGPTError(f"--endings must be >= 2 (a choice), got {args.endings}")
    if args.seed < 0:
        raise TinyGPTError(f"--seed must be >= 0, got {args.seed}")
    if args.hellaswag is not None and not args.hellaswag:
        raise TinyGPTError("--hellaswag needs a path: a HellaSwag .jsonl file")
    shape = _shape(args)
    if args.pretrained is None and shape["n_embd"] % shape["n_head"]:
        raise TinyGPTError(f"--n-embd {shape['n_embd']} is not divisible by --n-head {shape['n_head']}")


def _load(args, peer: bool):
    """(tinygpt model, tokenizer or None, peer model or None, a description of the model)."""
    from tinygpt.model import GPT, GPTConfig

    torch = transformers = None
    if peer:
        torch, transformers = import_torch_peer("transformers")
    if args.pretrained is not None:
        from tinygpt.finetune import load_gpt2_dir

        # (NaN weights, which scored acc 0.0000 on our sides with exit 0, are refused there)
        model, tokenizer, description = load_gpt2_dir(args.pretrained, backend=args.backend)
        hf = peer_model(torch, transformers, model.host_params(), model.config) if peer else None
        return model, tokenizer, hf, description
    shape = _shape(args)
    config = GPTConfig(shape["vocab_size"], shape["block_size"], shape["n_layer"], shape["n_head"],
                       shape["n_embd"], gelu=args.gelu or "tanh")
    if peer:  # transformers initialises (GPT-2's init), tinygpt reads its weights
        from tinygpt.bench.generate import build_models

        params, hf = build_models(config, seed=args.seed)
    else:
        params, hf = GPT(config, seed=args.seed).params, None
    model = GPT(config, backend=args.backend, params=params)
    tokenizer = None
    if args.hellaswag is not None:
        from tinygpt.tokenizer import BPETokenizer

        tokenizer = BPETokenizer.gpt2()
        if tokenizer.vocab_size > config.vocab_size:
            need = tokenizer.vocab_size
            raise TinyGPTError(f"--hellaswag reads the file with GPT-2's tokenizer, whose {need} ids need "
                               f"--vocab-size {need} or more, got {config.vocab_size}")
    description = "random (transformers' GPT-2 init)" if peer else "random (tinygpt's GPT-2 init)"
    return model, tokenizer, hf, f"{description}, seed {args.seed}"


def _examples(args, model, tokenizer):
    """(a list of (tokens, mask, label), a line saying what they are)."""
    if args.hellaswag is None:
        longest = span(args.context_tokens)[1] + span(args.ending_tokens)[1]
        block_size = model.config.block_size
        if longest > block_size + 1:  # (render would cut them; these are to be the uncut examples)
            raise TinyGPTError(f"synthetic rows of up to {longest} tokens do not fit the model's context of "
                               f"{block_size} (+ the one predicted): lower --context-tokens or "
                               "--ending-tokens")
        examples = synthetic_examples(args.limit, model.config.vocab_size, args.context_tokens,
                                      args.ending_tokens, args.endings, args.seed)
        (c_low, c_high), (e_low, e_high) = span(args.context_tokens), span(args.ending_tokens)
        what = (f"{len(examples)} synthetic examples (seed {args.seed}, random labels): contexts of {c_low} "
                f"to {c_high} tokens, {args.endings} endings of {e_low} to {e_high}")
    else:
        from tinygpt import hellaswag

        read = list(hellaswag.iter_examples(args.hellaswag, args.limit))
        rendered = hellaswag.render_all(read, tokenizer, model.config.block_size)
        examples = [(tokens, mask, example.label) for example, (tokens, mask, _) in zip(read, rendered)]
        cut = sum(r.cut > 0 for r in rendered)
        # (a cut example's rows share a context when its endings are as long as each other: cut alike)
        unshared = sum(not hellaswag._shared_context(tokens, mask) for tokens, mask, _ in examples)
        what = (f"{len(examples)} examples of {args.hellaswag} ({cut} cut to fit, {unshared} of them with "
                "rows keeping different parts of the context: scored by rows on both our sides)")
    contexts = [int(mask[0].argmax()) for _, mask, _ in examples]
    ending_lengths = [int(n) for _, mask, _ in examples for n in mask.sum(axis=1)]
    what += (f"; mean context {np.mean(contexts):.1f} tokens, mean ending {np.mean(ending_lengths):.1f}, "
             f"{np.mean([len(t) for t, _, _ in examples]):.1f} endings an example")
    return examples, what


def _command_line(args) -> str:
    """The command that repeats this run, every setting spelled out."""
    parts = ["tinygpt bench hellaswag"]
    if args.pretrained is not None:
        parts.append(f"--pretrained {args.pretrained}")
    else:
        shape = _shape(args)
        parts += [f"--{name.replace('_', '-')} {shape[name]}" for name in SHAPE]
        parts.append(f"--gelu {args.gelu or 'tanh'}")
    if args.hellaswag is not None:
        parts.append(f"--hellaswag {args.hellaswag}")
    else:
        parts.append(f"--context-tokens {args.context_tokens} --ending-tokens {args.ending_tokens} "
                     f"--endings {args.endings}")
    parts.append(f"--limit {args.limit} --seed {args.seed} --backend {args.backend}")
    if args.no_peer:
        parts.append("--no-peer")
    return " ".join(parts)


def run(args):
    from tinygpt import hellaswag

    _check(args)
    peer = not args.no_peer
    threads = blas_threads()
    model, tokenizer, hf, description = _load(args, peer)
    examples, what = _examples(args, model, tokenizer)
    model.eval()

    sides = {
        "tinygpt, shared context": lambda tokens, mask: hellaswag.score(model, tokens, mask),
        "tinygpt, rows": lambda tokens, mask: hellaswag.score(model, tokens, mask, share_context=False),
    }
    if peer:
        torch, _ = import_torch_peer("transformers")
        torch.set_num_threads(threads)
        sides["transformers (build-nanogpt's way)"] = lambda tokens, mask: peer_score(torch, hf, tokens, mask)

    cfg = model.config
    print(f"command: {_command_line(args)}")
    print(f"hellaswag scoring: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, vocabulary "
          f"{cfg.vocab_size}, block {cfg.block_size}, {cfg.gelu} GELU; {description}; float32; {threads} "
          f"thread(s) on each side; tinygpt's backend {args.backend}")
    print(what)
    print("examples/s = examples / the side's summed scoring time (tokenizing not timed); the sides "
          "alternate example by example, after one untimed example each")

    for score in sides.values():  # warm-up
        score(*examples[0][:2])
    seconds = dict.fromkeys(sides, 0.0)
    scores = {name: [] for name in sides}
    for tokens, mask, _ in examples:
        for name, score in sides.items():
            start = time.perf_counter()
            scores[name].append(score(tokens, mask))
            seconds[name] += time.perf_counter() - start

    labels = np.array([label for _, _, label in examples])
    picks = {name: (np.array([np.argmax(s) for s, _ in got]), np.array([np.argmax(m) for _, m in got]))
             for name, got in scores.items()}
    peer_name = next((name for name in sides if name.startswith("transformers")), None)
    n = len(examples)
    header = f"{'side':<36} {'examples/s':>10} {'vs transformers':>16} {'acc':>7} {'acc_norm':>9}"
    print(header)
    print("-" * len(header))
    for name in sides:
        rate = n / seconds[name]
        ratio = f"{seconds[peer_name] / seconds[name]:>15.2f}x" if peer_name else f"{'-':>16}"
        acc, acc_norm = (np.mean(p == labels) for p in picks[name])
        print(f"{name:<36} {rate:>10.2f} {ratio} {acc:>7.4f} {acc_norm:>9.4f}")
    if peer_name:
        theirs = scores[peer_name]
        for name in sides:
            if name == peer_name:
                continue
            same = [int((picks[name][k] == picks[peer_name][k]).sum()) for k in (0, 1)]
            worst = max(float(np.max(np.abs(ours[k] - peer[k]) / np.abs(peer[k])))
                        for ours, peer in zip(scores[name], theirs) for k in (0, 1))
            verdict = "the same" if same == [n, n] else "NOT the same"
            print(f"{name}: {verdict} picks as transformers' (acc {same[0]}/{n}, acc_norm {same[1]}/{n}); "
                  f"log-likelihoods within {worst:.1e} relative")
