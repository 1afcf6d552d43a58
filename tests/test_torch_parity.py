"""Parity with PyTorch, as llm.c's test_gpt2 does it: the same GPT-2 weights in transformers and in tinygpt
give the same logits, loss and every parameter gradient; and tinygpt's checkpoints load back into
transformers."""

import logging

import numpy as np
import pytest
import torch
import transformers

from tinygpt.gradcheck import relative_error
from tinygpt.model import GPT

V, T, B = 67, 12, 3


@pytest.fixture(scope="module", params=["gelu_new", "gelu"])
def hf_dir(request, tmp_path_factory, make_random_hf_gpt2):
    """A random GPT2LMHeadModel with non-zero biases and LayerNorm affines, saved with save_pretrained;
    with GPT-2's tanh GELU ("gelu_new") and with the erf one ("gelu", GPTConfig.gelu "erf", nanoGPT's)."""
    model = make_random_hf_gpt2(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32,
                                perturb_affines=True, activation_function=request.param)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path


def data():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    targets[0, :3] = -1  # ignored positions, as PyTorch's ignore_index=-1
    return idx, targets


def torch_reference(path, dtype):
    model = transformers.GPT2LMHeadModel.from_pretrained(path).to(dtype).eval()
    idx, targets = data()
    logits = model(torch.from_numpy(idx)).logits
    loss = torch.nn.functional.cross_entropy(
        logits.view(-1, V), torch.from_numpy(targets).view(-1), ignore_index=-1
    )
    loss.backward()
    grads = {name.removeprefix("transformer."): p.grad.numpy() for name, p in model.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


@pytest.mark.parametrize(
    "dtype, torch_dtype, logits_tol, grad_tol",
    [(np.float32, torch.float32, 1e-5, 1e-4), (np.float64, torch.float64, 1e-12, 1e-10)],
)
def test_logits_loss_and_every_gradient_match_pytorch(hf_dir, dtype, torch_dtype, logits_tol, grad_tol):
    ref_logits, ref_loss, ref_grads = torch_reference(hf_dir, torch_dtype)
    model = GPT.from_pretrained(hf_dir, dtype=dtype).eval()
    hf_gelu = transformers.GPT2Config.from_pretrained(hf_dir).activation_function
    assert model.config.gelu == {"gelu_new": "tanh", "gelu": "erf"}[hf_gelu]
    idx, targets = data()
    logits, loss = model.forward(idx, targets)
    assert logits.dtype == dtype
    assert relative_error(logits, ref_logits) < logits_tol
    assert loss == pytest.approx(ref_loss, rel=logits_tol)
    grads = model.backward()
    assert set(grads) == set(ref_grads) - {"lm_head.weight"}  # tied: lm_head is wte
    errors = {name: relative_error(g, ref_grads[name]) for name, g in grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < grad_tol, f"{worst}: {errors[worst]:.2e}"


def test_save_pretrained_loads_into_transformers(hf_dir, tmp_path, caplog):
    model = GPT.from_pretrained(hf_dir).eval()
    model.save_pretrained(tmp_path)
    transformers.logging.enable_propagation()  # transformers' logger does not reach caplog by default
    try:
        with caplog.at_level(logging.WARNING):
            hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        transformers.logging.disable_propagation()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    idx, _ = data()
    with torch.no_grad():
        hf_logits = hf.eval()(torch.from_numpy(idx)).logits.numpy()
    assert relative_error(hf_logits, model.forward(idx)[0]) < 1e-5
    torch.testing.assert_close(hf.lm_head.weight, hf.transformer.wte.weight)  # still tied


def test_a_float64_model_saves_as_float64_for_transformers(hf_dir, tmp_path):
    # config.json said "float32" beside float64 tensors: dtype="auto" loaded them narrowed
    model = GPT.from_pretrained(hf_dir, dtype=np.float64).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype="auto")
    assert hf.transformer.wte.weight.dtype == torch.float64
    idx, _ = data()
    with torch.no_grad():
        hf_logits = hf.eval()(torch.from_numpy(idx)).logits.numpy()
    assert relative_error(hf_logits, model.forward(idx)[0]) < 1e-12


def test_bfloat16_checkpoint_loads_widened_exactly(tmp_path):
    # NumPy has no bfloat16, so safetensors' NumPy loader refuses such files; fine-tuned GPT-2s are often
    # saved that way. tinygpt widens them to float32 (exact: bf16 is float32's upper half), as torch does.
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    from tinygpt.model import GPTConfig

    config = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    GPT(config, seed=0).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}
    save_file(bf16, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = GPT.from_pretrained(tmp_path)
    assert len(loaded.params) == len(bf16)
    for name, tensor in bf16.items():
        ours = loaded.params[name.removeprefix("transformer.")]
        np.testing.assert_array_equal(ours, tensor.float().numpy(), err_msg=name)
