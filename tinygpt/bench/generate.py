"""``tinygpt bench generate``: KV-cached decoding tokens/s against transformers' ``generate``, side by side.

Both sides hold the same weights: a randomly initialised transformers ``GPT2LMHeadModel`` (default: 6
layers, 6 heads, 384 wide, vocabulary 50257, block 1024, float32) whose state dict tinygpt reads as its
params dict. Each side continues the same random 16-token prompt by 200 greedy tokens, batch 1:

- tinygpt: ``tinygpt.generate.generate(params, config, prompt, 200, temperature=0)``, KV cache on;
- transformers: ``model.generate(prompt, max_new_tokens=200, do_sample=False, use_cache=True)`` under
  ``torch.no_grad()``, PyTorch CPU with ``torch.set_num_threads`` equal to NumPy's BLAS thread count.

tokens/s = new tokens / wall time of the whole call (prompt prefill included, on both sides). Runs of the
two sides alternate (ours, theirs, ours, ...) so that other load on the machine slows both alike; the
figure is the median run. Further rows: sampling (temperature 0.8, top-k 200, top-p 0.95 on both sides;
the filters cost a few passes over the vocabulary per token) and recomputation (``use_cache=False`` on
both sides, one run each, not a median: the full forward of the context for every token), which gives the
speed-up the cache buys at this length. The last line checks that both sides produced the same greedy
tokens.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from tinygpt.bench import blas_threads, import_torch_peer, inference_peer_config
from tinygpt.errors import TinyGPTError


def add_arguments(parser):
    parser.add_argument("--n-layer", type=int, default=6, help="transformer blocks (6)")
    parser.add_argument("--n-head", type=int, default=6, help="attention heads (6)")
    parser.add_argument("--n-embd", type=int, default=384, help="width C (384)")
    parser.add_argument("--vocab-size", type=int, default=50257, help="vocabulary V (50257, GPT-2's)")
    parser.add_argument("--block-size", type=int, default=1024, help="context length (1024)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens (16)")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (200)")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side, cached (5)")
    parser.add_argument("--no-recompute", action="store_true", help="skip the slow use_cache=False runs")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers (tinygpt figures only)")
    parser.add_argument("--gelu", choices=("tanh", "erf"), default="tanh",
                        help="the MLP's GELU: GPT-2's tanh form (tanh), or x Phi(x), nanoGPT's (erf)")
    parser.add_argument("--backend", choices=("numpy", "numba"), default="numba",
                        help="the model's backend, as `tinygpt sample --backend` (numba): the decoder is "
                        "NumPy's on both, numba lends it the compiled exact GELU (--gelu erf)")


def build_models(config, seed=0, with_peer=True):
    """(params, hf_model or None): the same random GPT-2 weights for both sides.

    With the peer, transformers initialises the model (GPT-2's init) and tinygpt reads its state dict;
    without it, tinygpt's own GPT-2 init.
    """
    if not with_peer:
        from tinygpt.model import GPT

        return GPT(config, seed=seed).params, None
    torch, transformers = import_torch_peer("transformers")
    torch.manual_seed(seed)
    hf_config = inference_peer_config(transformers, config)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    params = {
        k.removeprefix("transformer."): np.ascontiguousarray(v.detach().numpy(), dtype=np.float32)
        for k, v in hf_model.state_dict().items()
        if k.startswith("transformer.") and not k.endswith((".attn.bias", ".attn.masked_bias"))
    }  # Conv1D weights are stored (in, out) already: no transposes
    return params, hf_model


def _runs(sides: dict, repeats: int) -> dict:
    """{name: (median seconds, tokens of the last run)}: each side once untimed, then in turn."""
    for fn in sides.values():
        fn(8)  # warm-up: first-call costs (allocator, BLAS threads, transformers' setup)
    times = {name: [] for name in sides}
    tokens = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            tokens[name] = fn(None)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), tokens[name]) for name, t in times.items()}


def run(args):
    from tinygpt.generate import generate
    from tinygpt.model import GPTConfig

    if args.prompt_len < 1 or args.new_tokens < 1 or args.repeats < 1 or args.batch_size < 1:
        raise TinyGPTError("--prompt-len, --new-tokens, --batch-size and --repeats must be >= 1")
    if args.prompt_len + args.new_tokens > args.block_size:
        raise TinyGPTError("--prompt-len + --new-tokens must fit in --block-size (transformers' GPT-2 "
                           "cannot go past its context)")  # fmt: skip
    config = GPTConfig(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd,
                       gelu=args.gelu)
    peer = not args.no_peer
    threads = blas_threads()
    params, hf_model = build_models(config, with_peer=peer)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch_size, args.prompt_len))
    new = args.new_tokens

    sampling = dict(temperature=0.8, top_k=200, top_p=0.95)  # a typical sampling setting, for both sides

    def ours(n=None, use_cache=True, sample=False):
        n = n or new
        kwargs = dict(sampling, seed=0) if sample else dict(temperature=0)
        out = generate(params, config, prompt, n, use_cache=use_cache, backend=args.backend, **kwargs)
        return out[:, -n:]

    sides = {"tinygpt": ours}
    if peer:
        torch, _ = import_torch_peer("transformers")
        torch.set_num_threads(threads)
        prompt_t = torch.from_numpy(prompt)

        def theirs(n=None, use_cache=True, sample=False):
            n = n or new
            kwargs = dict(sampling, do_sample=True) if sample else dict(do_sample=False)
            with torch.no_grad():
                out = hf_model.generate(prompt_t, max_new_tokens=n, use_cache=use_cache, pad_token_id=0,
                                        **kwargs)  # fmt: skip
            return out[:, -n:].numpy()

        sides["transformers"] = theirs

    print(f"decoding: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, vocabulary "
          f"{config.vocab_size}, block {config.block_size}; batch {args.batch_size}, {args.prompt_len}-token "
          f"prompt, {new} new tokens; {args.gelu} GELU; float32; {threads} thread(s) on each side; tinygpt's "
          f"backend {args.backend}")
    print(f"tokens/s = new tokens / whole call (prefill included); median of {args.repeats} alternating "
          "runs (the slow recompute row: one run); sampled = temperature 0.8, top-k 200, top-p 0.95")

    def tokens_per_s(results):
        return {name: new * args.batch_size / seconds for name, (seconds, _) in results.items()}

    greedy = _runs(sides, args.repeats)
    rows = [("KV cache, greedy", tokens_per_s(greedy))]
    sampled = {name: (lambda n, fn=fn: fn(n, sample=True)) for name, fn in sides.items()}
    rows.append(("KV cache, sampled", tokens_per_s(_runs(sampled, args.repeats))))
    if not args.no_recompute:
        uncached = {name: (lambda n, fn=fn: fn(n, use_cache=False)) for name, fn in sides.items()}
        rows.append(("recompute, greedy", tokens_per_s(_runs(uncached, 1))))

    header = f"{'tokens/s':<22} {'tinygpt':>10} {'transformers':>13} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for label, tps in rows:
        theirs_tps = tps.get("transformers")
        peer_text = f"{theirs_tps:>13.1f}" if theirs_tps else f"{'-':>13}"
        ratio = f"{tps['tinygpt'] / theirs_tps:>6.2f}x" if theirs_tps else f"{'-':>7}"
        print(f"{label:<22} {tps['tinygpt']:>10.1f} {peer_text} {ratio}")
    if not args.no_recompute:
        speedups = {name: rows[0][1][name] / rows[2][1][name] for name in rows[0][1]}
        peer_text = f"{speedups['transformers']:>12.1f}x" if "transformers" in speedups else f"{'-':>13}"
        print(f"{'cache speed-up':<22} {speedups['tinygpt']:>9.1f}x {peer_text}")
    if peer:
        same = np.mean(greedy["tinygpt"][1] == greedy["transformers"][1])
        print(f"greedy tokens identical to transformers': {same:.1%} of {new * args.batch_size}")
