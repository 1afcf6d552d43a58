"""Numba ``cuda.jit`` kernels: tiled SGEMM, flash-style causal attention and the element-wise layers.

Every public ``*_forward`` / ``*_backward`` function has the signature of its ``tinygpt.layers`` namesake,
so ``get_ops("cuda")`` drops into the model unchanged. Each accepts NumPy arrays OR numba device arrays and
answers in kind: give it host arrays and it copies in and out (correct, but every call crosses PCIe: this
is what lets the unchanged NumPy model and the tests run on it); give it device arrays (``to_device``) and
every result and cache stays on the GPU, so weights, activations, gradients and AdamW state never leave it.

How a CUDA kernel reads, for a NumPy programmer: the function body is what ONE thread does. A launch
``kernel[grid, block](...)`` runs it on ``grid`` blocks of ``block`` threads; ``cuda.blockIdx`` and
``cuda.threadIdx`` tell a thread which piece of the output is its own. Threads of a block share a small fast
``cuda.shared.array`` and wait for each other at ``cuda.syncthreads()``. ``cuda.local.array`` is a thread's
private scratch, kept in registers when small and indexed by constants.

Shapes of shared and local arrays must be compile-time constants, so kernels are built by small factories
(``gemm_kernel(BM, BN, BK, TM, TN, ...)``) whose arguments become constants of the compiled code; the
tests build the same kernels with tiny tiles and run them under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, one OS thread per CUDA thread, so tiny sizes only). Float literals are the
array's dtype (``ZERO = dtype(0)`` captured as a constant) so float32 kernels never touch float64.

The kernels, in reading order:

``gemm_kernel``            C = op(A) op(B) (+ bias), op = identity or transpose: the three products a
                           linear layer's forward and backward need. Shared-memory tiles of A and B, and
                           2-D register blocking: each thread accumulates a TM x TN block of C in
                           registers, so each value read from shared memory feeds TM or TN multiply-adds.
``attention_*_kernel``     FlashAttention-style causal attention: queries in tiles, keys/values streamed
                           through shared memory, softmax computed online (running max and sum), so the
                           T x T matrix never exists in global memory; the forward saves each row's
                           log-sum-exp and the backward recomputes the probabilities from it.
``layernorm``, ``gelu``, ``cross_entropy``, ``embedding``, ``adamw``, ``add``, ``scale``, ``column_sum``:
                           one thread per element, or one block per row with a shared-memory tree reduction.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from tinygpt import layers
from tinygpt.errors import TinyGPTError
from tinygpt.kernels import (
    _simulator_enabled,
    check_dropout,
    check_shape,
    checked_token_ids,
    dropout_kernel_args,
    make_dropout_bits,
)
from tinygpt.kernels.simulator import make_shared_arrays_thread_safe

if _simulator_enabled():  # the simulator's shared arrays race without it (see tinygpt.kernels.simulator)
    make_shared_arrays_thread_safe()

__all__ = [
    "embedding_forward", "embedding_backward", "layernorm_forward", "layernorm_backward",
    "linear_forward", "linear_backward", "gelu_forward", "gelu_backward", "gelu_erf_forward",
    "gelu_erf_backward", "attention_forward",
    "attention_backward", "dropout_forward", "dropout_backward", "cross_entropy_forward",
    "cross_entropy_backward", "adamw_update",
    # device-resident helpers (not layers, but what a model needs to keep a step on the GPU)
    "to_device", "to_host", "on_device", "matmul", "add", "add_inplace", "scale_inplace", "zeros",
    "column_sum", "zeros_like", "sum_squares", "sum_squares_total", "lm_head_forward", "lm_head_backward",
]

ELEMENTWISE_THREADS = 256  # threads per block of the one-thread-per-element kernels
ROW_THREADS = 256  # most threads per block of the one-block-per-row kernels (a power of two: tree sums)


# --- host <-> device ------------------------------------------------------------------------------


def on_device(a) -> bool:
    """True for a numba device array (real or simulated)."""
    return hasattr(a, "copy_to_host")


def to_device(a):
    """A device copy of a host array (C-contiguous); a device array is returned as is."""
    if a is None or on_device(a):
        return a
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    """A NumPy copy of a device array; host arrays (and None) pass through."""
    return a.copy_to_host() if on_device(a) else a


def _answer(a, device: bool):
    """Results go back where the inputs came from."""
    return a if device else to_host(a)


def _float_dtype(name, a):
    dtype = np.dtype(a.dtype)
    if dtype not in (np.float32, np.float64):
        raise TinyGPTError(f"{name}: cuda kernels take float32 or float64 arrays, got {dtype}")
    return dtype


def _blocks(n: int, threads: int) -> int:
    return max(1, (n + threads - 1) // threads)


def zeros(shape, dtype=np.float32):
    """A zero-filled device array (filled by a kernel: no host array is made or copied)."""
    out = cuda.device_array(shape, dtype=dtype)
    if out.size:
        _launch_1d(_fill_kernel(np.dtype(dtype).name), out.size, out.reshape(out.size), 0.0)
    return out


@functools.cache
def _fill_kernel(dtype_name):
    @cuda.jit
    def fill(a, value):
        i = cuda.grid(1)
        if i < a.size:
            a[i] = value

    return fill


# --- min / max inside kernels ---------------------------------------------------------------------


@cuda.jit(device=True)
def _min(a, b):
    """Python's two-argument ``min`` (b if b < a else a) for kernels. numba >= 0.66 builds the builtin
    min/max from a ``*args`` overload that its CUDA target fails to compile (numba/numba#10753), and the
    simulator, which never compiles, cannot notice: every kernel uses these two instead."""
    return b if b < a else a


@cuda.jit(device=True)
def _max(a, b):
    """Python's two-argument ``max`` (b if b > a else a) for kernels; see ``_min``."""
    return b if b > a else a


# dropout's keep decisions: tinygpt.layers.dropout_bits on scalars, for the attention and dropout kernels
_dropout_bits = make_dropout_bits(cuda.jit(device=True))


# --- SGEMM: shared-memory tiles + 2-D register blocking -------------------------------------------


@functools.cache
def gemm_kernel(BM, BN, BK, TM, TN, trans_a, trans_b, has_bias, dtype_name="float32"):
    """Kernel for ``c (M, N) = op(a) (M, K) @ op(b) (K, N) + bias (N,)``; launch with ``gemm_launch``.

    One block computes a BM x BN tile of C with (BM/TM) * (BN/TN) threads; thread (ty, tx) owns TM x TN
    values of it: rows ty*TM + i, columns tx + j*(BN/TN). The K axis is walked BK at a time: the block
    copies a BM x BK slice of op(A) and a BK x BN slice of op(B) into shared memory (zeros past the matrix
    edges, so any M, N, K works), then every thread does BK rank-1 updates of its register block::

        acc[i, j] += As[k, ty*TM + i] * Bs[k, tx + j*(BN/TN)]      i < TM, j < TN, k < BK

    Loading TM + TN values from shared memory feeds TM * TN multiply-adds (8x8: 16 loads, 64 FMAs), which
    is what lifts the kernel from shared-memory bound (one load per FMA) towards the arithmetic peak.
    ``As`` is stored transposed (k-major) so the TM values a thread reads are adjacent. A thread's columns
    are strided rather than adjacent so that the 16 threads of a warp that differ in tx read 16 adjacent
    words of Bs (16 different banks; adjacent blocks of 8 would put four threads on each bank) and write
    adjacent columns of C (coalesced stores).

    ``trans_a``: a is stored (K, M) and op(a) = a.T; ``trans_b``: b is stored (N, K) and op(b) = b.T.
    """
    if BM % TM or BN % TN:
        raise TinyGPTError(f"gemm tile {BM}x{BN} is not a multiple of the register block {TM}x{TN}")
    threads = (BM // TM) * (BN // TN)
    cols_of_threads = BN // TN
    # Rows of the shared tiles padded by 4 words: a warp's stores of a (M, K) or (N, K) operand go to 8
    # consecutive k of 4 rows, which without the pad (BM, BN multiples of 32) land on 4 banks only
    BM_PAD, BN_PAD = BM + 4, BN + 4
    dtype = np.dtype(dtype_name)
    ZERO = dtype.type(0)
    nb_type = _numba_type(dtype)

    @cuda.jit
    def gemm(a, b, bias, c, M, N, K):
        tid = cuda.threadIdx.x
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        ty = tid // cols_of_threads
        tx = tid % cols_of_threads
        As = cuda.shared.array((BK, BM_PAD), nb_type)
        Bs = cuda.shared.array((BK, BN_PAD), nb_type)
        acc = cuda.local.array((TM, TN), nb_type)
        reg_m = cuda.local.array(TM, nb_type)
        reg_n = cuda.local.array(TN, nb_type)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = ZERO
        for k0 in range(0, K, BK):
            # Cooperative loads. Consecutive threads take consecutive elements of the STORED matrix's rows,
            # so a warp's global reads are coalesced whichever way the operand is transposed.
            for e in range(tid, BM * BK, threads):
                if trans_a:  # a (K, M): m is the contiguous axis
                    m = e % BM
                    k = e // BM
                else:  # a (M, K): k is the contiguous axis
                    m = e // BK
                    k = e % BK
                gm = row0 + m
                gk = k0 + k
                value = ZERO
                if gm < M and gk < K:
                    value = a[gk, gm] if trans_a else a[gm, gk]
                As[k, m] = value
            for e in range(tid, BK * BN, threads):
                if trans_b:  # b (N, K): k is the contiguous axis
                    n = e // BK
                    k = e % BK
                else:  # b (K, N): n is the contiguous axis
                    k = e // BN
                    n = e % BN
                gn = col0 + n
                gk = k0 + k
                value = ZERO
                if gn < N and gk < K:
                    value = b[gn, gk] if trans_b else b[gk, gn]
                Bs[k, n] = value
            cuda.syncthreads()  # the tiles are complete before anyone reads them
            for k in range(BK):
                for i in range(TM):
                    reg_m[i] = As[k, ty * TM + i]
                for j in range(TN):
                    reg_n[j] = Bs[k, tx + j * cols_of_threads]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += reg_m[i] * reg_n[j]
            cuda.syncthreads()  # everyone is done reading before the next tiles overwrite them
        for i in range(TM):
            r = row0 + ty * TM + i
            if r < M:
                for j in range(TN):
                    col = col0 + tx + j * cols_of_threads
                    if col < N:
                        value = acc[i, j]
                        if has_bias:
                            value += bias[col]
                        c[r, col] = value

    gemm.tile = (BM, BN, BK, TM, TN)
    gemm.threads = threads
    return gemm


def gemm_config(M: int, N: int) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, TM, TN) for an M x N product: big tiles for big matrices, smaller ones so a small
    product still spreads over many blocks (and so the simulator, one OS thread per CUDA thread, copes)."""
    if M * N >= 1024 * 1024:
        return 128, 128, 8, 8, 8  # 256 threads, 64 outputs each
    if M * N >= 128 * 128:
        return 64, 64, 8, 4, 4  # 256 threads, 16 outputs each
    return 16, 16, 8, 2, 2  # 64 threads


def gemm_launch(kernel, a, b, c, M, N, K, bias=None):
    """Launch a ``gemm_kernel`` over the C tiles (grid x: column tiles, y: row tiles)."""
    BM, BN = kernel.tile[0], kernel.tile[1]
    grid = (_blocks(N, BN), _blocks(M, BM))
    if grid[1] > MAX_GRID_Y:  # the launch would fail in the driver ("invalid argument")
        raise TinyGPTError(f"matmul: {M} rows make {grid[1]} row tiles of {BM}, over the {MAX_GRID_Y} "
                           "blocks a CUDA grid may have along y")
    # without a bias any 1-D array of the dtype fills the slot (has_bias=False compiles the read away)
    kernel[grid, kernel.threads](a, b, _flat(c) if bias is None else bias, c, M, N, K)


def matmul(a, b, trans_a=False, trans_b=False, bias=None, tile=None):
    """``op(a) @ op(b) (+ bias)`` for 2-D arrays, op = transpose where asked; answers in kind (host/device).

    a (M, K) or, with trans_a, (K, M); b (K, N) or, with trans_b, (N, K); bias (N,) -> (M, N).
    ``tile`` overrides ``gemm_config`` (tests use it to exercise every configuration).
    """
    device = on_device(a)
    dtype = _float_dtype("matmul", a)
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise TinyGPTError(f"matmul takes 2-D arrays, got {a.shape} and {b.shape}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise TinyGPTError(f"matmul: inner sizes differ: op(a) is {M}x{K}, op(b) is {Kb}x{N}")
    if bias is not None:  # the epilogue reads bias[col] for each of the N columns
        check_shape("matmul", "bias", bias, (N,))
    a, b, bias = to_device(a), to_device(b), to_device(bias)
    c = cuda.device_array((M, N), dtype=dtype)
    if M and N:
        if K == 0 and bias is None:  # (with a bias, the kernel's K loop is empty and its epilogue adds it)
            c = zeros((M, N), dtype)
        else:
            kernel = gemm_kernel(*(tile or gemm_config(M, N)), bool(trans_a), bool(trans_b), bias is not None,
                                 dtype.name)
            gemm_launch(kernel, a, b, c, M, N, K, bias)
    return _answer(c, device)


# --- flash-style causal attention -----------------------------------------------------------------


SHARED_BYTES = 48 * 1024  # static shared memory a block may declare on every CUDA GPU
MAX_GRID_Y = 65535  # blocks along a grid's y (and z) axis

# _PADDING: shared memory is 32 banks of 4 bytes; the 16 threads of a warp that read 16 different rows of a
# tile at the same column hit one bank 16 times in turn when the row length is a multiple of 32 words. One
# extra (never read) element per row shifts each row by a bank, so those reads spread over the banks. The
# attention kernels pad the tiles they read down a column (``BR_PAD = BR + 1``).


def forward_shared_bytes(BR: int, BC: int, D: int, itemsize: int) -> int:
    """Shared memory of ``attention_forward_kernel``: Q^T (D, BR), K^T (D, BC + 1) whose buffer then holds
    V (BC, D), the scores (BC, BR + 1) and three numbers a row."""
    return (D * BR + D * (BC + 1) + BC * (BR + 1) + 3 * BR) * itemsize


def backward_shared_bytes(BR: int, BC: int, D: int, itemsize: int) -> int:
    """Shared memory of the larger backward kernel: dK/dV's K^T and V^T (D, BC), Q^T and dY^T (D, BR + 1),
    a and ds (BR, BC), or dQ's Q^T and dY^T (D, BR), K^T and V^T (D, BC + 1), ds (BC, BR + 1); plus lse
    and delta."""
    dkdv = 2 * D * BC + 2 * D * (BR + 1) + 2 * BR * BC
    dq = 2 * D * BR + 2 * D * (BC + 1) + BC * (BR + 1)
    return (max(dkdv, dq) + 2 * BR) * itemsize


def attention_tiles(T: int, head_size: int, itemsize: int = 4) -> tuple[int, int]:
    """(BR, BC) of the backward kernels: query rows and keys per tile.

    Each keeps Q, dY, K and V tiles of ``head_size``-wide rows and two (BR, BC) tiles (p and ds) in
    shared memory: 32 x 32 for float32 heads of 64 (41 KB), halved until they fit in 48 KB.
    """
    br = 32
    while br > 4 and br // 2 >= T:  # short sequences: do not launch mostly idle threads
        br //= 2
    while br > 1 and backward_shared_bytes(br, br, head_size, itemsize) > SHARED_BYTES:
        br //= 2
    return br, br


def attention_forward_tiles(T: int, head_size: int, itemsize: int = 4) -> tuple[int, int]:
    """(BR, BC) of the forward kernel: query rows and keys per tile, both powers of two.

    Its block keeps a (BR, D) Q tile, a (BC, D) K-or-V tile and the (BR, BC) scores in shared memory:
    64 x 32 for float32 heads of 64 (34 KB), halved until they fit in 48 KB.
    """
    br = 64
    while br > 4 and br // 2 >= T:  # short sequences: do not launch mostly idle threads
        br //= 2
    bc = max(1, br // 2)
    while br > 1 and forward_shared_bytes(br, bc, head_size, itemsize) > SHARED_BYTES:
        br = max(1, br // 2)
        bc = max(1, bc // 2)
    return br, bc


def _check_attention_tiles(BR, BC, D, itemsize):
    """Hand-picked tiles must be powers of two (the thread grids divide them evenly only then) and fit."""
    for name, size in (("BR", BR), ("BC", BC)):
        if not (isinstance(size, (int, np.integer)) and size >= 1 and size & (size - 1) == 0):
            raise TinyGPTError(f"attention tiles: {name} must be a power of two, got {size!r}")
    need = max(forward_shared_bytes(BR, BC, D, itemsize), backward_shared_bytes(BR, BC, D, itemsize))
    if need > SHARED_BYTES:
        raise TinyGPTError(f"attention tiles ({BR}, {BC}) at head size {D} need {need} bytes of shared "
                           f"memory, over the {SHARED_BYTES} a block may use")


def _attention_grid(BR: int, BC: int) -> tuple[int, int]:
    """(GY, GX): the thread grid of every attention kernel, query rows x keys, 16 x 16 at most; with
    power-of-two tiles each thread then owns TM = BR / GY rows and TN = BC / GX keys of a score tile."""
    return min(16, BR), min(16, BC)


@functools.cache
def attention_forward_kernel(D, BR, BC, dtype_name="float32"):
    """Causal attention forward for head size D: one block per (query tile, batch*head), GEMM-style.

    The block's GY x GX = (BR/TM) x (BC/TN) threads form a grid; thread (ty, tx) owns TM query rows
    (ty*TM + i) and, per key tile, TN keys of the scores and TD = ceil(D / GX) columns of the output, both
    strided by GX (tx + j*GX: a warp reads adjacent words, see ``gemm_kernel``). The Q tile is
    loaded once (pre-scaled); the block then walks the key tiles the rows can see (causal: tiles right
    of the diagonal never run), three steps each, like two small GEMMs with a softmax between them::

        S = Q K^T          each thread a TM x TN block in registers, from the Q and K tiles in shared
                           memory (TM + TN loads feed TM * TN multiply-adds); masked S = -inf above the
                           diagonal; written to shared memory
        online softmax     one thread per row: new max m' = max(m, max_j S_ij), alpha = exp(m - m'),
                           P_ij = exp(S_ij - m'), l = alpha l + sum_j P_ij  (dropout's keep decision,
                           recomputed from the hash, scales P after it is summed into l, as in the
                           reference)
        O = alpha O + P V  each thread a TM x TD block of O in registers, V loaded into K's buffer

    so that at the end O / l = softmax(S) V exactly, and lse = m + log l is saved for the backward. Nothing
    of size T x T is ever written to global memory.
    """
    dtype = np.dtype(dtype_name)
    nb_type = _numba_type(dtype)
    ZERO = dtype.type(0)
    ONE = dtype.type(1)
    NEG_INF = dtype.type(-np.inf)
    GY, GX = _attention_grid(BR, BC)
    TM, TN = BR // GY, BC // GX
    TD = (D + GX - 1) // GX  # output columns per thread
    THREADS = GY * GX
    BR_PAD, BC_PAD = BR + 1, BC + 1  # see _PADDING
    KV_SIZE = D * BC_PAD  # K^T (D, BC_PAD), then V (BC, D) in the same buffer: shapes must be constants

    @cuda.jit
    def attention_forward(qkv, drop_key, threshold, keep_scale, use_dropout, out, lse, T, n_head, scale):
        tile = cuda.blockIdx.x
        bh = cuda.blockIdx.y
        b = bh // n_head
        h = bh % n_head
        C = n_head * D
        tid = cuda.threadIdx.x
        ty = tid // GX
        tx = tid % GX
        row0 = tile * BR
        Qs = cuda.shared.array((D, BR), nb_type)  # Q^T: a thread's TM rows are adjacent for each d
        KVs = cuda.shared.array(KV_SIZE, nb_type)  # K^T as (D, BC + 1), then V as (BC, D)
        Ps = cuda.shared.array((BC, BR_PAD), nb_type)  # scores, then probabilities, transposed like Qs
        m_s = cuda.shared.array(BR, nb_type)  # running max of each row
        l_s = cuda.shared.array(BR, nb_type)  # running sum of exp(S - max)
        alpha_s = cuda.shared.array(BR, nb_type)  # this tile's rescaling of each row
        acc = cuda.local.array((TM, TD), nb_type)
        q_reg = cuda.local.array(TM, nb_type)
        k_reg = cuda.local.array(TN, nb_type)
        s_reg = cuda.local.array((TM, TN), nb_type)
        v_reg = cuda.local.array(TD, nb_type)
        for i in range(TM):
            for j in range(TD):
                acc[i, j] = ZERO
        for e in range(tid, BR * D, THREADS):  # consecutive threads read consecutive d: coalesced
            r = e // D
            d = e % D
            row = row0 + r
            Qs[d, r] = qkv[b, row, h * D + d] * scale if row < T else ZERO
        for r in range(tid, BR, THREADS):
            m_s[r] = NEG_INF
            l_s[r] = ZERO
        key_end = _min(T, row0 + BR)  # the tile's last row sees keys < key_end
        for k0 in range(0, key_end, BC):
            for e in range(tid, BC * D, THREADS):
                c = e // D
                d = e % D
                key = k0 + c
                KVs[d * BC_PAD + c] = qkv[b, key, C + h * D + d] if key < T else ZERO
            cuda.syncthreads()
            # S = Q K^T, this thread's TM x TN block
            for i in range(TM):
                for j in range(TN):
                    s_reg[i, j] = ZERO
            for d in range(D):
                for i in range(TM):
                    q_reg[i] = Qs[d, ty * TM + i]
                for j in range(TN):
                    k_reg[j] = KVs[d * BC_PAD + tx + j * GX]
                for i in range(TM):
                    for j in range(TN):
                        s_reg[i, j] += q_reg[i] * k_reg[j]
            for i in range(TM):
                row = row0 + ty * TM + i
                for j in range(TN):
                    key = k0 + tx + j * GX
                    Ps[tx + j * GX, ty * TM + i] = s_reg[i, j] if key <= row and key < T else NEG_INF
            cuda.syncthreads()
            # online softmax, one thread per row
            for r in range(tid, BR, THREADS):
                row = row0 + r
                m_old = m_s[r]
                m_new = m_old
                for c in range(BC):
                    m_new = _max(m_new, Ps[c, r])
                alpha = ONE
                total = ZERO
                if m_new != NEG_INF:  # else no key of this row yet: nothing to rescale or add
                    alpha = math.exp(m_old - m_new)
                    for c in range(BC):
                        p = math.exp(Ps[c, r] - m_new)  # exp(-inf) = 0 for masked keys
                        total += p
                        if use_dropout and p != ZERO and row < T:  # the reference's mask entry
                            entry = np.uint64((bh * T + row) * T + k0 + c)
                            p = p * keep_scale if _dropout_bits(drop_key, entry) >= threshold else ZERO
                        Ps[c, r] = p
                else:
                    for c in range(BC):
                        Ps[c, r] = ZERO
                m_s[r] = m_new
                l_s[r] = l_s[r] * alpha + total
                alpha_s[r] = alpha
            # V replaces K in the shared buffer (K was last read before the sync above)
            for e in range(tid, BC * D, THREADS):
                c = e // D
                d = e % D
                key = k0 + c
                KVs[c * D + d] = qkv[b, key, 2 * C + h * D + d] if key < T else ZERO
            cuda.syncthreads()
            # O = alpha O + P V, this thread's TM x TD block
            for i in range(TM):
                alpha = alpha_s[ty * TM + i]
                for j in range(TD):
                    acc[i, j] *= alpha
            for c in range(BC):
                for i in range(TM):
                    q_reg[i] = Ps[c, ty * TM + i]
                for j in range(TD):
                    col = tx + j * GX
                    v_reg[j] = KVs[c * D + col] if col < D else ZERO
                for i in range(TM):
                    for j in range(TD):
                        acc[i, j] += q_reg[i] * v_reg[j]
            cuda.syncthreads()  # done with P and V before the next tile overwrites them
        for i in range(TM):
            r = ty * TM + i
            row = row0 + r
            if row < T:
                inv = ONE / l_s[r]
                for j in range(TD):
                    col = tx + j * GX
                    if col < D:
                        out[b, row, h * D + col] = acc[i, j] * inv
        for r in range(tid, BR, THREADS):
            row = row0 + r
            if row < T:
                lse[b, h, row] = m_s[r] + math.log(l_s[r])

    attention_forward.threads = THREADS
    return attention_forward


@functools.cache
def attention_delta_kernel(D, dtype_name="float32"):
    """delta[b, h, i] = sum_d dout[b, i, h*D + d] * out[b, i, h*D + d]  (= sum_j p_ij dp_ij, see backward)."""
    ZERO = np.dtype(dtype_name).type(0)

    @cuda.jit
    def attention_delta(dout, out, delta, T, n_head):
        i = cuda.grid(1)
        if i < delta.size:
            b = i // (n_head * T)
            h = (i // T) % n_head
            t = i % T
            total = ZERO
            for d in range(D):
                total += dout[b, t, h * D + d] * out[b, t, h * D + d]
            delta[b, h, t] = total

    return attention_delta


@functools.cache
def _attention_backward_steps(D, BR, BC, dtype_name):
    """The two steps dK/dV's and dQ's kernels share, as device functions of their tile shapes."""
    dtype = np.dtype(dtype_name)
    nb_type = _numba_type(dtype)
    ZERO = dtype.type(0)
    GY, GX = _attention_grid(BR, BC)
    TM, TN = BR // GY, BC // GX
    THREADS = GY * GX

    @cuda.jit(device=True)
    def load_query_tile(qkv, dout, lse, delta, Qs, dYs, lse_s, delta_s, b, h, row0, T, tid):
        # Q^T and dY^T (D, BR) and each row's lse and delta; zeros past T
        for e in range(tid, BR * D, THREADS):
            r = e // D
            d = e % D
            row = row0 + r
            Qs[d, r] = qkv[b, row, h * D + d] if row < T else ZERO
            dYs[d, r] = dout[b, row, h * D + d] if row < T else ZERO
        for r in range(tid, BR, THREADS):
            row = row0 + r
            lse_s[r] = lse[b, h, row] if row < T else ZERO
            delta_s[r] = delta[b, h, row] if row < T else ZERO

    @cuda.jit(device=True)
    def scores_and_dp(Qs, dYs, Ks, Vs, ty, tx, s, dp):
        # S = Q K^T and dP = dY V^T, this thread's TM x TN block of each: Q's and dY's loads serve both
        q_reg = cuda.local.array(TM, nb_type)
        dy_reg = cuda.local.array(TM, nb_type)
        k_reg = cuda.local.array(TN, nb_type)
        v_reg = cuda.local.array(TN, nb_type)
        for i in range(TM):
            for j in range(TN):
                s[i, j] = ZERO
                dp[i, j] = ZERO
        for d in range(D):
            for i in range(TM):
                q_reg[i] = Qs[d, ty * TM + i]
                dy_reg[i] = dYs[d, ty * TM + i]
            for j in range(TN):
                k_reg[j] = Ks[d, tx + j * GX]
                v_reg[j] = Vs[d, tx + j * GX]
            for i in range(TM):
                for j in range(TN):
                    s[i, j] += q_reg[i] * k_reg[j]
                    dp[i, j] += dy_reg[i] * v_reg[j]

    return load_query_tile, scores_and_dp


@functools.cache
def attention_dkdv_kernel(D, BR, BC, dtype_name="float32"):
    """dK, dV: one block per (key tile of BC keys, batch*head), the query tiles at or below it streamed.

    For each query tile the block recomputes, GEMM-style (thread (ty, tx) a TM x TN block of each, from
    Q, dY, K and V tiles in shared memory), the scores and dP, then (a = p * keep, where keep_ij is 0 or
    1 / (1 - p) recomputed from the dropout hash, 1 without dropout)::

        p_ij = exp(scale q_i.k_j - lse_i)      (no T x T matrix was stored: lse is the forward's)
        dp_ij = keep_ij (dy_i . v_j)
        ds_ij = p_ij (dp_ij - delta_i)         delta_i = sum_j p_ij dp_ij = dy_i . out_i  (precomputed)

    and, with a and ds in shared memory, accumulates in registers (each thread TC keys x TD columns)::

        dv_j += sum_i a_ij dy_i,     dk_j += scale sum_i ds_ij q_i

    A key tile only meets query tiles at or below it: the causal skip again, now on the backward.
    """
    dtype = np.dtype(dtype_name)
    nb_type = _numba_type(dtype)
    ZERO = dtype.type(0)
    GY, GX = _attention_grid(BR, BC)
    TM, TN = BR // GY, BC // GX  # scores per thread
    TC, TD = (BC + GY - 1) // GY, (D + GX - 1) // GX  # dK / dV keys and columns per thread
    THREADS = GY * GX
    BR_PAD = BR + 1  # see _PADDING
    load_query_tile, scores_and_dp = _attention_backward_steps(D, BR, BC, dtype_name)

    @cuda.jit
    def attention_dkdv(qkv, dout, lse, delta, drop_key, threshold, keep_scale, use_dropout, dqkv, T, n_head,
                       scale):
        tile = cuda.blockIdx.x
        bh = cuda.blockIdx.y
        b = bh // n_head
        h = bh % n_head
        C = n_head * D
        tid = cuda.threadIdx.x
        ty = tid // GX
        tx = tid % GX
        key0 = tile * BC
        Ks = cuda.shared.array((D, BC), nb_type)  # K^T, V^T, Q^T, dY^T: a thread's rows or keys are
        Vs = cuda.shared.array((D, BC), nb_type)  # adjacent for each d
        Qs = cuda.shared.array((D, BR_PAD), nb_type)
        dYs = cuda.shared.array((D, BR_PAD), nb_type)
        As = cuda.shared.array((BR, BC), nb_type)  # a = p * keep
        dSs = cuda.shared.array((BR, BC), nb_type)  # scale * ds
        lse_s = cuda.shared.array(BR, nb_type)
        delta_s = cuda.shared.array(BR, nb_type)
        dk = cuda.local.array((TC, TD), nb_type)
        dv = cuda.local.array((TC, TD), nb_type)
        s = cuda.local.array((TM, TN), nb_type)
        dp = cuda.local.array((TM, TN), nb_type)
        a_reg = cuda.local.array(TC, nb_type)
        ds_reg = cuda.local.array(TC, nb_type)
        dyc_reg = cuda.local.array(TD, nb_type)
        qc_reg = cuda.local.array(TD, nb_type)
        for i in range(TC):
            for j in range(TD):
                dk[i, j] = ZERO
                dv[i, j] = ZERO
        for e in range(tid, BC * D, THREADS):
            c = e // D
            d = e % D
            key = key0 + c
            Ks[d, c] = qkv[b, key, C + h * D + d] if key < T else ZERO
            Vs[d, c] = qkv[b, key, 2 * C + h * D + d] if key < T else ZERO
        q_start = (key0 // BR) * BR  # the first query tile holding a row >= this tile's first key
        for i0 in range(q_start, T, BR):
            load_query_tile(qkv, dout, lse, delta, Qs, dYs, lse_s, delta_s, b, h, i0, T, tid)
            cuda.syncthreads()
            scores_and_dp(Qs, dYs, Ks, Vs, ty, tx, s, dp)
            for i in range(TM):
                r = ty * TM + i
                row = i0 + r
                for j in range(TN):
                    c = tx + j * GX
                    key = key0 + c
                    a = ZERO
                    ds = ZERO
                    if row < T and key <= row:
                        p = math.exp(s[i, j] * scale - lse_s[r])
                        a = p
                        g = dp[i, j]
                        if use_dropout:  # the forward's mask entry, recomputed
                            entry = np.uint64((bh * T + row) * T + key)
                            kept = keep_scale if _dropout_bits(drop_key, entry) >= threshold else ZERO
                            a = p * kept
                            g *= kept
                        ds = p * (g - delta_s[r]) * scale
                    As[r, c] = a
                    dSs[r, c] = ds
            cuda.syncthreads()
            for r in range(BR):  # dV += A^T dY, dK += dS^T Q: this thread's TC keys x TD columns
                for i in range(TC):
                    c = ty * TC + i
                    a_reg[i] = As[r, c] if c < BC else ZERO
                    ds_reg[i] = dSs[r, c] if c < BC else ZERO
                for j in range(TD):
                    col = tx + j * GX
                    dyc_reg[j] = dYs[col, r] if col < D else ZERO
                    qc_reg[j] = Qs[col, r] if col < D else ZERO
                for i in range(TC):
                    for j in range(TD):
                        dv[i, j] += a_reg[i] * dyc_reg[j]
                        dk[i, j] += ds_reg[i] * qc_reg[j]
            cuda.syncthreads()  # done with this query tile before the next one is loaded
        for i in range(TC):
            c = ty * TC + i
            key = key0 + c
            if c < BC and key < T:
                for j in range(TD):
                    col = tx + j * GX
                    if col < D:
                        dqkv[b, key, C + h * D + col] = dk[i, j]
                        dqkv[b, key, 2 * C + h * D + col] = dv[i, j]

    attention_dkdv.threads = THREADS
    return attention_dkdv


@functools.cache
def attention_dq_kernel(D, BR, BC, dtype_name="float32"):
    """dQ: one block per (query tile, batch*head), the key tiles it can see streamed.

    ``dq_i = scale sum_{j <= i} ds_ij k_j`` with ds recomputed exactly as in ``attention_dkdv_kernel``
    (same thread grid), then dQ += dS K register-blocked (each thread TM rows x TD columns). Splitting dQ
    from dK/dV costs one more recomputation of p but needs no atomic adds, and the result is deterministic.
    """
    dtype = np.dtype(dtype_name)
    nb_type = _numba_type(dtype)
    ZERO = dtype.type(0)
    GY, GX = _attention_grid(BR, BC)
    TM, TN = BR // GY, BC // GX
    TD = (D + GX - 1) // GX
    THREADS = GY * GX
    BR_PAD, BC_PAD = BR + 1, BC + 1  # see _PADDING
    load_query_tile, scores_and_dp = _attention_backward_steps(D, BR, BC, dtype_name)

    @cuda.jit
    def attention_dq(qkv, dout, lse, delta, drop_key, threshold, keep_scale, use_dropout, dqkv, T, n_head,
                     scale):
        tile = cuda.blockIdx.x
        bh = cuda.blockIdx.y
        b = bh // n_head
        h = bh % n_head
        C = n_head * D
        tid = cuda.threadIdx.x
        ty = tid // GX
        tx = tid % GX
        row0 = tile * BR
        Qs = cuda.shared.array((D, BR), nb_type)
        dYs = cuda.shared.array((D, BR), nb_type)
        Ks = cuda.shared.array((D, BC_PAD), nb_type)
        Vs = cuda.shared.array((D, BC_PAD), nb_type)
        dSs = cuda.shared.array((BC, BR_PAD), nb_type)  # scale * ds, transposed: a thread's rows adjacent
        lse_s = cuda.shared.array(BR, nb_type)
        delta_s = cuda.shared.array(BR, nb_type)
        dq = cuda.local.array((TM, TD), nb_type)
        s = cuda.local.array((TM, TN), nb_type)
        dp = cuda.local.array((TM, TN), nb_type)
        ds_reg = cuda.local.array(TM, nb_type)
        kc_reg = cuda.local.array(TD, nb_type)
        for i in range(TM):
            for j in range(TD):
                dq[i, j] = ZERO
        load_query_tile(qkv, dout, lse, delta, Qs, dYs, lse_s, delta_s, b, h, row0, T, tid)
        key_end = _min(T, row0 + BR)
        for k0 in range(0, key_end, BC):
            for e in range(tid, BC * D, THREADS):
                c = e // D
                d = e % D
                key = k0 + c
                Ks[d, c] = qkv[b, key, C + h * D + d] if key < T else ZERO
                Vs[d, c] = qkv[b, key, 2 * C + h * D + d] if key < T else ZERO
            cuda.syncthreads()
            scores_and_dp(Qs, dYs, Ks, Vs, ty, tx, s, dp)
            for i in range(TM):
                r = ty * TM + i
                row = row0 + r
                for j in range(TN):
                    c = tx + j * GX
                    key = k0 + c
                    ds = ZERO
                    if row < T and key <= row:
                        p = math.exp(s[i, j] * scale - lse_s[r])
                        g = dp[i, j]
                        if use_dropout:
                            entry = np.uint64((bh * T + row) * T + key)
                            if _dropout_bits(drop_key, entry) >= threshold:
                                g *= keep_scale
                            else:
                                g = ZERO
                        ds = p * (g - delta_s[r]) * scale
                    dSs[c, r] = ds
            cuda.syncthreads()
            for c in range(BC):  # dQ += dS K: this thread's TM rows x TD columns
                for i in range(TM):
                    ds_reg[i] = dSs[c, ty * TM + i]
                for j in range(TD):
                    col = tx + j * GX
                    kc_reg[j] = Ks[col, c] if col < D else ZERO
                for i in range(TM):
                    for j in range(TD):
                        dq[i, j] += ds_reg[i] * kc_reg[j]
            cuda.syncthreads()  # done with K, V and dS before the next key tile
        for i in range(TM):
            row = row0 + ty * TM + i
            if row < T:
                for j in range(TD):
                    col = tx + j * GX
                    if col < D:
                        dqkv[b, row, h * D + col] = dq[i, j]

    attention_dq.threads = THREADS
    return attention_dq


def attention_forward(qkv, n_head, dropout=0.0, rng=None):
    """Causal multi-head self-attention. qkv (B, T, 3C) -> (B, T, C); flash-style, see the kernels above.

    The cache holds qkv, the output and the per-row log-sum-exp (B, H, T): O(T), not O(T^2). Dropout
    (training) draws one key from ``rng`` as ``tinygpt.layers`` does, and each thread recomputes the keep
    decision of the weights it touches from (key, entry) with the reference's hash, in the forward and both
    backward kernels: the same weights dropped as on every backend, and no (B, H, T, T) mask anywhere.
    """
    return flash_attention_forward(qkv, n_head, dropout, rng)


def attention_backward(dout, cache):
    """(B, T, C) -> dqkv (B, T, 3C)."""
    return flash_attention_backward(dout, cache)


def flash_attention_forward(qkv, n_head, dropout=0.0, rng=None, tiles=None):
    """``attention_forward`` with the (BR, BC) tile sizes chosen by hand, for the forward and the backward
    kernels alike (default: ``attention_forward_tiles`` and ``attention_tiles``)."""
    device = on_device(qkv)
    dtype = _float_dtype("attention_forward", qkv)
    if len(qkv.shape) != 3 or qkv.shape[2] % 3 != 0:
        raise TinyGPTError(f"attention_forward: qkv must be (B, T, 3C), got shape {qkv.shape}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if n_head < 1 or C % n_head != 0:
        raise TinyGPTError(f"attention_forward: n_embd {C} is not divisible by n_head {n_head}")
    D = C // n_head
    if B * n_head > MAX_GRID_Y:
        raise TinyGPTError(f"attention_forward: batch x heads = {B * n_head}, over the {MAX_GRID_Y} blocks "
                           "a CUDA grid may have along y")
    if tiles is not None:
        _check_attention_tiles(*tiles, D, dtype.itemsize)
    elif (need := backward_shared_bytes(1, 1, D, dtype.itemsize)) > SHARED_BYTES:  # not even one-row
        # tiles fit (head size 2048 in float32, 1024 in float64): the launch would fail in the driver
        raise TinyGPTError(f"attention_forward: head size {D} is too large for the CUDA attention kernels: "
                           f"{dtype.name} tiles of one row need {need} bytes of shared memory, over the "
                           f"{SHARED_BYTES} a block may use")
    check_dropout(dropout, rng)
    # one key for the whole mask, as the reference draws it; without dropout the kernels never read it
    drop = (*dropout_kernel_args(dtype, dropout, rng), bool(dropout))  # (key, threshold, scale, use_dropout)
    qkv_d = to_device(qkv)
    out = cuda.device_array((B, T, C), dtype=dtype)
    lse = cuda.device_array((B, n_head, T), dtype=dtype)
    BR, BC = tiles or attention_forward_tiles(T, D, dtype.itemsize)
    if T and B:
        kernel = attention_forward_kernel(D, BR, BC, dtype.name)
        kernel[(_blocks(T, BR), B * n_head), kernel.threads](qkv_d, *drop, out, lse, T, n_head,
                                                             dtype.type(1.0 / math.sqrt(D)))
    # the backward's kernels have tiles of their own (the forward passes only lse on)
    backward_tiles = tiles or attention_tiles(T, D, dtype.itemsize)
    cache = (qkv_d, out, lse, n_head, drop, backward_tiles)
    return _answer(out, device), cache


def flash_attention_backward(dout, cache):
    """``attention_backward`` with the forward's tile sizes."""
    qkv, out, lse, n_head, drop, (BR, BC) = cache
    check_shape("attention_backward", "dout", dout, out.shape)
    device = on_device(dout)
    dout = to_device(dout)
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    dtype = np.dtype(qkv.dtype)
    scale = dtype.type(1.0 / math.sqrt(D))
    delta = cuda.device_array((B, n_head, T), dtype=dtype)
    dqkv = cuda.device_array(qkv.shape, dtype=dtype)
    if T and B:
        _launch_1d(attention_delta_kernel(D, dtype.name), delta.size, dout, out, delta, T, n_head)
        dkdv = attention_dkdv_kernel(D, BR, BC, dtype.name)
        dkdv[(_blocks(T, BC), B * n_head), dkdv.threads](qkv, dout, lse, delta, *drop, dqkv, T, n_head, scale)
        dq = attention_dq_kernel(D, BR, BC, dtype.name)
        dq[(_blocks(T, BR), B * n_head), dq.threads](qkv, dout, lse, delta, *drop, dqkv, T, n_head, scale)
    return _answer(dqkv, device)



# --- element-wise kernels -------------------------------------------------------------------------


@functools.cache
def _elementwise_kernels(dtype_name):
    """Both GELUs' forward/backward, add, multiply, scale and the AdamW update: one thread per element."""
    dtype = np.dtype(dtype_name)
    K = dtype.type(math.sqrt(2.0 / math.pi))
    A = dtype.type(0.044715)
    A3 = dtype.type(3.0 * 0.044715)
    ONE = dtype.type(1.0)

    # GELU as the reference writes it: 0.5 x (1 + tanh(u)) = x s, s = sigmoid(2u) = 1 / (1 + exp(-2u)),
    # u = k (x + a x^3). The tanh form cancels in 1 + tanh(u) for x below about -4 (gelu(-5) came out
    # -2.98e-7 against -2.29e-7). Past EXP_MAX, exp(-2u) would overflow (inf on a GPU, a warning in the
    # simulator): s is 0 there to the dtype's precision, and gelu = x * 0 = -0, as the reference's x / inf.
    TWO, ZERO = dtype.type(2.0), dtype.type(0.0)
    EXP_MAX = dtype.type(88.72 if dtype == np.float32 else 709.78)  # just under log(the largest float)
    CLIP = dtype.type(layers.GELU_GRAD_CLIP)  # see there: past it gelu's derivative is exactly 1 or 0

    @cuda.jit
    def gelu_fwd(x, out):
        i = cuda.grid(1)
        if i < x.size:
            xi = x[i]
            z = -TWO * K * (xi + A * xi * xi * xi)  # -2u
            out[i] = xi * ZERO if z > EXP_MAX else xi / (ONE + math.exp(z))

    @cuda.jit
    def gelu_bwd(dout, x, dx):
        # d gelu / dx = s (1 + 2 k x (1 - s) (1 + 3 a x^2)), the polynomial's x clipped to +-CLIP, where
        # s (1 - s) is already exactly 0 (unclipped: inf past |x| ~ 1.2e13 in float32, and 0 * inf = NaN)
        i = cuda.grid(1)
        if i < x.size:
            xi = x[i]
            z = -TWO * K * (xi + A * xi * xi * xi)
            s = ZERO if z > EXP_MAX else ONE / (ONE + math.exp(z))
            xc = _min(_max(xi, -CLIP), CLIP)
            dx[i] = dout[i] * (s * (ONE + TWO * K * xc * (ONE - s) * (ONE + A3 * xc * xc)))

    # GELU without approximation (layers.gelu_erf_forward): x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, no
    # cancellation for negative x; its derivative Phi(x) + x phi(x), whose exp underflows (never
    # overflows) far out, where the derivative is exactly 1 or 0
    HALF = dtype.type(0.5)
    SQRT_HALF = dtype.type(math.sqrt(0.5))
    INV_SQRT_2PI = dtype.type(1.0 / math.sqrt(2.0 * math.pi))

    @cuda.jit
    def gelu_erf_fwd(x, out):
        i = cuda.grid(1)
        if i < x.size:
            xi = x[i]
            out[i] = xi * HALF * math.erfc(-SQRT_HALF * xi)

    @cuda.jit
    def gelu_erf_bwd(dout, x, dx):
        i = cuda.grid(1)
        if i < x.size:
            xi = x[i]
            density = INV_SQRT_2PI * math.exp(-HALF * xi * xi)
            dx[i] = dout[i] * (HALF * math.erfc(-SQRT_HALF * xi) + xi * density)

    @cuda.jit
    def add(a, b, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[i] + b[i]

    @cuda.jit
    def mul(a, b, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = a[i] * b[i]

    @cuda.jit
    def scale(a, factor):
        i = cuda.grid(1)
        if i < a.size:
            a[i] *= factor

    @cuda.jit
    def adamw(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2):
        # p *= 1 - lr wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)      (the hyperparameters arrive in p's dtype)
        i = cuda.grid(1)
        if i < p.size:
            gi = g[i]
            mi = beta1 * m[i] + (ONE - beta1) * gi
            vi = beta2 * v[i] + (ONE - beta2) * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * (ONE - lr * weight_decay) - (lr / bias_corr1) * mi / (
                math.sqrt(vi) / math.sqrt(bias_corr2) + eps)

    return {"gelu_fwd": gelu_fwd, "gelu_bwd": gelu_bwd, "gelu_erf_fwd": gelu_erf_fwd,
            "gelu_erf_bwd": gelu_erf_bwd, "add": add, "mul": mul, "scale": scale, "adamw": adamw}


def _launch_elementwise(name, n, *args, dtype):
    _launch_1d(_elementwise_kernels(np.dtype(dtype).name)[name], n, *args)


def _launch_1d(kernel, n, *args):
    """Launch a one-thread-per-element kernel over n elements."""
    threads = _elementwise_threads(n)
    kernel[_blocks(n, threads), threads](*args)


def _elementwise_threads(n: int) -> int:
    """ELEMENTWISE_THREADS per block, fewer for a tiny array (no block of mostly idle threads)."""
    threads = 32
    while threads < ELEMENTWISE_THREADS and threads < n:
        threads *= 2
    return threads


def _flat(a):
    return a.reshape(a.size)


def _elementwise_forward(name, kernel_name, x):
    """One thread per element of ``x`` running ``kernel_name`` (x, out): (out, cache = x on the device)."""
    device = on_device(x)
    dtype = _float_dtype(name, x)
    x = to_device(x)
    out = cuda.device_array(x.shape, dtype=dtype)
    if x.size:
        _launch_elementwise(kernel_name, x.size, _flat(x), _flat(out), dtype=dtype)
    return _answer(out, device), x


def _elementwise_backward(name, kernel_name, dout, x):
    """One thread per element running ``kernel_name`` (dout, x, dx): dx, answered in dout's kind."""
    check_shape(name, "dout", dout, x.shape)
    device = on_device(dout)
    dout = to_device(dout)
    dx = cuda.device_array(x.shape, dtype=x.dtype)
    if x.size:
        _launch_elementwise(kernel_name, x.size, _flat(dout), _flat(x), _flat(dx), dtype=x.dtype)
    return _answer(dx, device)


def gelu_forward(x):
    """Element-wise GELU (tanh approximation). Any shape -> same shape."""
    return _elementwise_forward("gelu_forward", "gelu_fwd", x)


def gelu_backward(dout, cache):
    return _elementwise_backward("gelu_backward", "gelu_bwd", dout, cache)


def gelu_erf_forward(x):
    """Element-wise GELU without approximation, x Phi(x). Any shape -> same shape."""
    return _elementwise_forward("gelu_erf_forward", "gelu_erf_fwd", x)


def gelu_erf_backward(dout, cache):
    return _elementwise_backward("gelu_erf_backward", "gelu_erf_bwd", dout, cache)


def add(a, b):
    """a + b, same shapes (the residual connection). Answers in kind."""
    device = on_device(a)
    a, b = to_device(a), to_device(b)
    if a.shape != b.shape:
        raise TinyGPTError(f"add: shapes differ: {a.shape} and {b.shape}")
    out = cuda.device_array(a.shape, dtype=a.dtype)
    if a.size:
        _launch_elementwise("add", a.size, _flat(a), _flat(b), _flat(out), dtype=a.dtype)
    return _answer(out, device)


def add_inplace(a, b):
    """a += b, returning a (accumulating gradients, e.g. the tied wte): on the device when a is there."""
    if tuple(a.shape) != tuple(b.shape):
        raise TinyGPTError(f"add_inplace: shapes differ: {a.shape} and {b.shape}")
    if not on_device(a):  # a host array (a model whose params were set to NumPy arrays): NumPy adds
        a += to_host(b)
        return a
    b = to_device(b)
    if a.size:
        _launch_elementwise("add", a.size, _flat(a), _flat(b), _flat(a), dtype=a.dtype)
    return a


def scale_inplace(a, factor):
    """a *= factor, returning a (gradient clipping, averaging micro-batches): on the device when a is."""
    if not on_device(a):
        a *= factor
        return a
    if a.size:
        dtype = np.dtype(a.dtype)
        _launch_elementwise("scale", a.size, _flat(a), dtype.type(factor), dtype=dtype)
    return a


def zeros_like(a):
    """A zero device array with a's shape and dtype."""
    return zeros(tuple(a.shape), np.dtype(a.dtype))


SUM_SQUARES_BLOCKS = 32  # most blocks one array's sum of squares gets (each then strides over the array)
SUM_SQUARES_THREADS = 256  # threads per block there (a power of two: tree sum)


@functools.cache
def _sum_squares_kernel(dtype_name, threads=SUM_SQUARES_THREADS):
    F64 = _numba_type(np.dtype(np.float64))  # the sum is float64 whatever x's dtype (a deliberate exception)

    @cuda.jit
    def sum_squares_partial(x, partials, offset):
        # Block b of this launch: sum of x[i]^2 over its threads' strided elements, in float64 (a gradient
        # norm sums millions of squares), into partials[offset + b]. No atomics: the blocks' sums are added
        # on the host in a fixed order, so the norm (and so clipping) is the same bit for bit every run.
        buf = cuda.shared.array(threads, F64)
        acc = 0.0
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            xi = float(x[i])
            acc += xi * xi
        total = _block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            partials[offset + cuda.blockIdx.x] = total

    return sum_squares_partial


def sum_squares_total(arrays) -> float:
    """sum over all ``arrays`` of sum(a**2), as a Python float: a gradient's squared global norm.

    One launch per array, each writing a few per-block partial sums into one shared buffer, and ONE copy to
    the host at the end (not one per array: each copy waits for the GPU to finish everything queued).
    """
    arrays = [to_device(a) for a in arrays]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return 0.0
    threads = SUM_SQUARES_THREADS
    n_blocks = [min(SUM_SQUARES_BLOCKS, _blocks(a.size, threads)) for a in arrays]
    partials = cuda.device_array(sum(n_blocks), dtype=np.float64)
    offset = 0
    for a, blocks in zip(arrays, n_blocks):
        kernel = _sum_squares_kernel(_float_dtype("sum_squares", a).name, threads)
        kernel[blocks, threads](_flat(a), partials, offset)
        offset += blocks
    return float(partials.copy_to_host().sum())


def sum_squares(a) -> float:
    """sum(a**2) as a Python float (``sum_squares_total`` of one array)."""
    return sum_squares_total([a])


def lm_head_forward(x, wte):
    """Tied output layer: x (..., C) @ wte.T -> (..., V) as a transposed-B GEMM (no wte.T copy)."""
    device = on_device(x)
    shape = tuple(x.shape)
    V, C = wte.shape
    x2 = to_device(x).reshape(int(np.prod(shape[:-1])), C)
    wte = to_device(wte)
    logits = matmul(x2, wte, trans_b=True)  # (N, C) @ (V, C)^T
    return _answer(logits.reshape(*shape[:-1], V), device), (x2, wte, shape)


def lm_head_backward(dlogits, cache):
    """dlogits (..., V) -> dx (..., C) = dlogits @ wte, dwte (V, C) = dlogits^T @ x."""
    x2, wte, shape = cache
    device = on_device(dlogits)
    V = wte.shape[0]
    d2 = to_device(dlogits).reshape(x2.shape[0], V)
    dx = matmul(d2, wte)  # (N, V) @ (V, C)
    dwte = matmul(d2, x2, trans_a=True)  # (V, N) @ (N, C)
    return _answer(dx.reshape(*shape), device), _answer(dwte, device)


@functools.cache
def _dropout_kernel(dtype_name):
    ZERO = np.dtype(dtype_name).type(0)

    @cuda.jit
    def dropout_mul(x, out, key, threshold, scale):
        # out_i = x_i * keep_i, keep_i = 1 / (1 - p) where dropout_bits(key, i) >= threshold, else 0 (a
        # product even when dropped: nan stays nan, as in the reference): the mask is recomputed from
        # (key, i) by each thread, never drawn on the host, copied or stored
        i = cuda.grid(1)
        if i < x.size:
            out[i] = x[i] * (scale if _dropout_bits(key, np.uint64(i)) >= threshold else ZERO)

    return dropout_mul


def dropout_forward(x, p, rng):
    """Inverted dropout, the reference's mask (one key drawn from ``rng``) computed on the device; the
    cache is the key, not a mask."""
    if not 0.0 <= p < 1.0:
        raise TinyGPTError(f"dropout probability must be in [0, 1), got {p}")
    if p == 0.0:
        return x, None
    device = on_device(x)
    dtype = _float_dtype("dropout_forward", x)
    key, threshold, scale = dropout_kernel_args(dtype, p, rng)
    x = to_device(x)
    out = cuda.device_array(x.shape, dtype=dtype)
    if x.size:
        _launch_1d(_dropout_kernel(dtype.name), x.size, _flat(x), _flat(out), key, threshold, scale)
    return _answer(out, device), (key, threshold, scale, tuple(x.shape))


def dropout_backward(dout, cache):
    if cache is None:
        return dout
    key, threshold, scale, shape = cache
    check_shape("dropout_backward", "dout", dout, shape)
    device = on_device(dout)
    dout = to_device(dout)
    dtype = _float_dtype("dropout_backward", dout)
    dx = cuda.device_array(dout.shape, dtype=dtype)
    if dout.size:
        _launch_1d(_dropout_kernel(dtype.name), dout.size, _flat(dout), _flat(dx), key, threshold,
                   dtype.type(scale))
    return _answer(dx, device)


def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, bias_corr1, bias_corr2):
    """One AdamW step in place (see ``tinygpt.kernels.adamw_update`` for the equation); returns None.

    ``param``, ``m`` and ``v`` must be device arrays (the optimizer state lives on the GPU); grad may be
    either.
    """
    for name, a in (("param", param), ("m", m), ("v", v)):
        if not on_device(a):
            raise TinyGPTError(f"adamw_update (cuda): {name} must be a device array (use to_device)")
        if a.shape != param.shape:
            raise TinyGPTError(f"adamw_update: {name} shape {a.shape} does not match param {param.shape}")
    if tuple(grad.shape) != tuple(param.shape):
        raise TinyGPTError(f"adamw_update: grad shape {grad.shape} does not match param {param.shape}")
    dtype = _float_dtype("adamw_update", param)
    grad = to_device(grad)
    t = dtype.type
    if param.size:
        _launch_elementwise("adamw", param.size, _flat(param), _flat(grad), _flat(m), _flat(v), t(lr),
                            t(beta1), t(beta2), t(eps), t(weight_decay), t(bias_corr1), t(bias_corr2),
                            dtype=dtype)


# --- one block per row: LayerNorm, cross-entropy; column sums -------------------------------------


@cuda.jit(device=True)
def _block_sum(buf, value):
    """Sum of ``value`` over the block's threads (a power of two), by a shared-memory tree; all get it."""
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()  # everyone has read buf[0] before the buffer is reused
    return total


@cuda.jit(device=True)
def _block_max(buf, value):
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            buf[t] = _max(buf[t], buf[t + stride])
        cuda.syncthreads()
        stride //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


@functools.cache
def _row_kernels(THREADS, dtype_name):
    """LayerNorm, cross-entropy and column-sum kernels for blocks of THREADS threads."""
    dtype = np.dtype(dtype_name)
    nb_type = _numba_type(dtype)
    ZERO = dtype.type(0)
    ONE = dtype.type(1)
    NEG_INF = dtype.type(-np.inf)

    @cuda.jit
    def layernorm_fwd(x, w, bias, has_bias, eps, out, mean, rstd):
        # one block per row: a first mean mu, then the sums of d = x - mu and d^2 (two passes: no
        # cancellation). The float32 sum puts mu a few ulps of x off the mean, which for a (nearly) constant
        # row is all of x - mean (1000.1 repeated 768 times normalised to +-0.019 * weight, not to 0): so
        # mu is corrected by mean(d), and var = mean(d^2) - mean(d)^2 (the corrected two-pass algorithm)
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        C = x.shape[1]
        n_cols = nb_type(C)  # an int64 divisor would promote mu, and all that follows, to float64
        buf = cuda.shared.array(THREADS, nb_type)
        s = ZERO
        for c in range(t, C, THREADS):
            s += x[n, c]
        mu = _block_sum(buf, s) / n_cols
        s = ZERO
        s2 = ZERO
        for c in range(t, C, THREADS):
            d = x[n, c] - mu
            s += d
            s2 += d * d
        shift = _block_sum(buf, s) / n_cols
        var = _block_sum(buf, s2) / n_cols - shift * shift
        mu += shift
        r = ONE / math.sqrt(_max(var, ZERO) + eps)  # (var rounds to a hair below 0 for a constant row)
        for c in range(t, C, THREADS):
            y = (x[n, c] - mu) * r * w[c]
            if has_bias:
                y += bias[c]
            out[n, c] = y
        if t == 0:
            mean[n] = mu
            rstd[n] = r

    @cuda.jit
    def layernorm_bwd_dx(dout, x, w, mean, rstd, dx):
        # dx = rstd (g - mean(g) - xhat mean(g xhat)),  g = dout * w
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        C = x.shape[1]
        buf = cuda.shared.array(THREADS, nb_type)
        mu = mean[n]
        r = rstd[n]
        g_sum = ZERO
        gx_sum = ZERO
        for c in range(t, C, THREADS):
            g = dout[n, c] * w[c]
            g_sum += g
            gx_sum += g * (x[n, c] - mu) * r
        g_mean = _block_sum(buf, g_sum) / nb_type(C)  # a float divisor: int64 would promote to float64
        gx_mean = _block_sum(buf, gx_sum) / nb_type(C)
        for c in range(t, C, THREADS):
            xhat = (x[n, c] - mu) * r
            dx[n, c] = r * (dout[n, c] * w[c] - g_mean - xhat * gx_mean)

    @cuda.jit
    def layernorm_bwd_dw_partial(dout, x, mean, rstd, dw_part, db_part, rows_per_chunk):
        # grid (column blocks, row chunks): partial sums over a chunk of rows of dout*xhat and dout
        c = cuda.blockIdx.x * THREADS + cuda.threadIdx.x
        chunk = cuda.blockIdx.y
        N, C = x.shape
        if c < C:
            dw = ZERO
            db = ZERO
            for n in range(chunk * rows_per_chunk, _min(N, (chunk + 1) * rows_per_chunk)):
                dw += dout[n, c] * (x[n, c] - mean[n]) * rstd[n]
                db += dout[n, c]
            dw_part[chunk, c] = dw
            db_part[chunk, c] = db

    @cuda.jit
    def column_sum_partial(a, part, rows_per_chunk):
        c = cuda.blockIdx.x * THREADS + cuda.threadIdx.x
        chunk = cuda.blockIdx.y
        N, C = a.shape
        if c < C:
            s = ZERO
            for n in range(chunk * rows_per_chunk, _min(N, (chunk + 1) * rows_per_chunk)):
                s += a[n, c]
            part[chunk, c] = s

    @cuda.jit
    def cross_entropy_fwd(logits, targets, row_max, row_sum, losses):
        # one block per row: m = max l, s = sum exp(l - m), loss = log(s) - (l[target] - m); target -1 -> 0.
        # m and s are kept apart for the backward: m + log(s) rounds log(s) away at large logits
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        V = logits.shape[1]
        buf = cuda.shared.array(THREADS, nb_type)
        target = targets[n]
        m = NEG_INF
        for j in range(t, V, THREADS):
            m = _max(m, logits[n, j])
        m = _block_max(buf, m)
        s = ZERO
        for j in range(t, V, THREADS):
            s += math.exp(logits[n, j] - m)
        s = _block_sum(buf, s)
        if t == 0:
            row_max[n] = m
            row_sum[n] = s
            losses[n, 0] = math.log(s) - (logits[n, target] - m) if target >= 0 else ZERO

    @cuda.jit
    def cross_entropy_bwd(logits, targets, row_max, row_sum, scale, dlogits):
        # (softmax - onehot) * dloss / n_valid with softmax = exp(l - m) / s; ignored rows get zeros
        n = cuda.blockIdx.x
        t = cuda.threadIdx.x
        V = logits.shape[1]
        target = targets[n]
        m = row_max[n]
        row_scale = scale / row_sum[n]  # the softmax's 1 / s and dloss / n_valid in one factor
        for j in range(t, V, THREADS):
            if target < 0:
                dlogits[n, j] = ZERO
            else:
                g = math.exp(logits[n, j] - m) * row_scale
                if j == target:
                    g -= scale
                dlogits[n, j] = g

    return {"layernorm_fwd": layernorm_fwd, "layernorm_bwd_dx": layernorm_bwd_dx,
            "layernorm_bwd_dw_partial": layernorm_bwd_dw_partial, "column_sum_partial": column_sum_partial,
            "cross_entropy_fwd": cross_entropy_fwd, "cross_entropy_bwd": cross_entropy_bwd}


def _row_threads(width: int) -> int:
    """Threads per block for rows of ``width`` elements: a power of two, from 8 up to ROW_THREADS, so a
    short row does not launch a block of idle threads."""
    threads = 8
    while threads < ROW_THREADS and threads < width:
        threads *= 2
    return threads


def _row_kernel(name, dtype, width):
    """The named kernel built for rows of ``width``; launch it with ``kernel.threads`` threads per block."""
    threads = _row_threads(width)
    kernel = _row_kernels(threads, np.dtype(dtype).name)[name]
    return kernel, threads


def _chunking(n_rows: int) -> tuple[int, int]:
    """(rows per chunk, chunks) for two-stage column sums: enough chunks to fill the GPU, >= 32 rows each."""
    chunks = max(1, min(256, n_rows // 32))
    rows = max(1, (n_rows + chunks - 1) // chunks)  # >= 1: no rows is one chunk, summing to zeros
    return rows, _blocks(n_rows, rows)


def column_sum(a):
    """Sum over the rows of a 2-D array: (N, C) -> (C,), in two stages (row chunks, then the chunks)."""
    device = on_device(a)
    a = to_device(a)
    dtype = np.dtype(a.dtype)
    N, C = a.shape
    kernel, threads = _row_kernel("column_sum_partial", dtype, C)
    while True:
        rows, chunks = _chunking(N)
        part = cuda.device_array((chunks, C), dtype=dtype)
        kernel[(_blocks(C, threads), chunks), threads](a, part, rows)
        if chunks == 1:
            return _answer(part.reshape(C), device)
        a, N = part, chunks


def layernorm_forward(x, weight, bias, eps=1e-5):
    """(..., C) -> (..., C): (x - mean) / sqrt(var + eps) * weight + bias, one block per row."""
    device = on_device(x)
    dtype = _float_dtype("layernorm_forward", x)
    shape = tuple(x.shape)
    C = shape[-1]
    check_shape("layernorm_forward", "weight", weight, (C,))
    if bias is not None:
        check_shape("layernorm_forward", "bias", bias, (C,))
    x2 = to_device(x).reshape(int(np.prod(shape[:-1])), C)
    weight = to_device(weight)
    bias_d = to_device(bias) if bias is not None else weight  # any array: has_bias=False never reads it
    N = x2.shape[0]
    out = cuda.device_array((N, C), dtype=dtype)
    mean = cuda.device_array(N, dtype=dtype)
    rstd = cuda.device_array(N, dtype=dtype)
    if N:
        kernel, threads = _row_kernel("layernorm_fwd", dtype, C)
        kernel[N, threads](x2, weight, bias_d, bias is not None, dtype.type(eps), out, mean, rstd)
    cache = (x2, weight, bias is not None, mean, rstd, shape)
    return _answer(out.reshape(*shape), device), cache


def layernorm_backward(dout, cache):
    """(..., C) -> dx, dweight (C,), dbias (C,) or None."""
    x2, weight, has_bias, mean, rstd, shape = cache
    check_shape("layernorm_backward", "dout", dout, shape)
    device = on_device(dout)
    dtype = np.dtype(x2.dtype)
    N, C = x2.shape
    dout2 = to_device(dout).reshape(N, C)
    dx = cuda.device_array((N, C), dtype=dtype)
    rows, chunks = _chunking(N)
    dw_part = cuda.device_array((chunks, C), dtype=dtype)
    db_part = cuda.device_array((chunks, C), dtype=dtype)
    if N:
        kernel, threads = _row_kernel("layernorm_bwd_dx", dtype, C)
        kernel[N, threads](dout2, x2, weight, mean, rstd, dx)
    kernel, threads = _row_kernel("layernorm_bwd_dw_partial", dtype, C)  # (no rows: writes the zeros)
    kernel[(_blocks(C, threads), chunks), threads](dout2, x2, mean, rstd, dw_part, db_part, rows)
    dweight = column_sum(dw_part)
    dbias = column_sum(db_part) if has_bias else None
    return _answer(dx.reshape(*shape), device), _answer(dweight, device), _answer(dbias, device)


def linear_forward(x, weight, bias):
    """x (..., in) @ weight (in, out) + bias (out,) -> (..., out): the tiled GEMM, bias in its epilogue."""
    device = on_device(x)
    _float_dtype("linear_forward", x)
    shape = tuple(x.shape)
    n_in, n_out = weight.shape
    x2 = to_device(x).reshape(int(np.prod(shape[:-1])), n_in)
    weight = to_device(weight)
    out = matmul(x2, weight, bias=to_device(bias))
    cache = (x2, weight, bias is not None, shape)
    return _answer(out.reshape(*shape[:-1], n_out), device), cache


def linear_backward(dout, cache):
    """dout (..., out) -> dx = dout W^T, dW = x^T dout, db = column sums of dout (None without bias)."""
    x2, weight, has_bias, shape = cache
    device = on_device(dout)
    n_in, n_out = weight.shape
    dout2 = to_device(dout).reshape(x2.shape[0], n_out)
    dx = matmul(dout2, weight, trans_b=True)  # (N, out) @ (out, in)
    dweight = matmul(x2, dout2, trans_a=True)  # (in, N) @ (N, out)
    dbias = column_sum(dout2) if has_bias else None
    return _answer(dx.reshape(*shape), device), _answer(dweight, device), _answer(dbias, device)


def cross_entropy_forward(logits, targets):
    """Mean cross-entropy over targets != -1: (B, T, V), (B, T) -> loss (Python float; the one number
    that crosses to the host). Targets are a host batch; n_valid is counted there."""
    dtype = _float_dtype("cross_entropy_forward", logits)
    shape = tuple(logits.shape)
    V = shape[-1]
    t_host = layers.checked_targets(to_host(targets), shape)
    n_valid = int((t_host >= 0).sum())
    l2 = to_device(logits).reshape(t_host.size, V)
    t_dev = cuda.to_device(t_host)
    N = t_host.size
    row_max = cuda.device_array(N, dtype=dtype)
    row_sum = cuda.device_array(N, dtype=dtype)
    losses = cuda.device_array((N, 1), dtype=dtype)
    if N:
        kernel, threads = _row_kernel("cross_entropy_fwd", dtype, V)
        kernel[N, threads](l2, t_dev, row_max, row_sum, losses)
        total = float(column_sum(losses).copy_to_host()[0])
    else:
        total = 0.0
    loss = total / max(n_valid, 1)
    return loss, (l2, t_dev, row_max, row_sum, n_valid, shape, on_device(logits))


def cross_entropy_backward(dloss, cache):
    """scalar dloss -> dlogits (B, T, V), on the device if the logits were."""
    l2, t_dev, row_max, row_sum, n_valid, shape, device = cache
    dtype = np.dtype(l2.dtype)
    dlogits = cuda.device_array(l2.shape, dtype=dtype)
    if l2.shape[0]:
        kernel, threads = _row_kernel("cross_entropy_bwd", dtype, l2.shape[1])
        kernel[l2.shape[0], threads](l2, t_dev, row_max, row_sum, dtype.type(float(dloss) / max(n_valid, 1)),
                                     dlogits)
    return _answer(dlogits.reshape(*shape), device)


# --- embedding ------------------------------------------------------------------------------------


@functools.cache
def _embedding_kernels(dtype_name):
    ZERO = np.dtype(dtype_name).type(0)

    @cuda.jit
    def forward(idx, wte, wpe, out):
        # thread per output element: out[n, c] = wte[idx[n], c] + wpe[n % T, c]
        i = cuda.grid(1)
        N, C = out.shape
        T = idx.shape[1]
        if i < N * C:
            n = i // C
            c = i % C
            out[n, c] = wte[idx[n // T, n % T], c] + wpe[n % T, c]

    @cuda.jit
    def backward_wte(ids, order, bounds, dout, dwte):
        # thread per (token of the batch, column): the token's rows of dout added in position order, as the
        # reference's np.add.at adds them. Atomic adds (one thread per element of dout) took them in whatever
        # order the GPU served them: the sum changed in its last bits from run to run.
        i = cuda.grid(1)
        C = dout.shape[1]
        if i < (bounds.size - 1) * C:
            k = i // C
            c = i % C
            s = ZERO
            for j in range(bounds[k], bounds[k + 1]):
                s += dout[order[j], c]
            dwte[ids[order[bounds[k]]], c] = s

    @cuda.jit
    def backward_wpe(dout, dwpe, B, T):
        # thread per (t, c): sum over the batch
        i = cuda.grid(1)
        C = dout.shape[1]
        if i < T * C:
            t = i // C
            c = i % C
            s = dout[t, c]
            for b in range(1, B):
                s += dout[b * T + t, c]
            dwpe[t, c] = s

    return forward, backward_wte, backward_wpe


def embedding_forward(idx, wte, wpe):
    """(B, T) int -> (B, T, C) = wte[idx] + wpe[:T]. idx is a host batch (it is small)."""
    device = on_device(wte)
    dtype = _float_dtype("embedding_forward", wte)
    if len(wte.shape) != 2:
        raise TinyGPTError(f"embedding_forward: wte must be (V, C), got shape {tuple(wte.shape)}")
    check_shape("embedding_forward", "wpe", wpe, (wpe.shape[0], wte.shape[1]))
    idx = checked_token_ids(to_host(idx), wte.shape[0], wpe.shape[0])
    B, T = idx.shape
    V, C = wte.shape
    N = B * T
    # the ids and, for the backward, where each token occurs (token_runs), in one copy: each copy waits for
    # the GPU's queued work
    batch = cuda.to_device(np.concatenate([idx.reshape(N), *token_runs(idx.reshape(N))]))
    ids, order, bounds = batch[:N], batch[N:2 * N], batch[2 * N:]
    out = cuda.device_array((N, C), dtype=dtype)
    if out.size:
        forward = _embedding_kernels(dtype.name)[0]
        _launch_1d(forward, out.size, ids.reshape(B, T), to_device(wte), to_device(wpe), out)
    cache = (ids, order, bounds, (B, T), tuple(wte.shape), tuple(wpe.shape), dtype)
    return _answer(out.reshape(B, T, C), device), cache


def token_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds) for a flat batch of token ids: ``order`` lists the positions token by token (a stable
    sort: each token's in increasing order), and ``order[bounds[k]:bounds[k + 1]]`` are the k-th token's.

    Example: ids [5, 2, 5] -> order [1, 0, 2], bounds [0, 1, 3] (token 2 at position 1; token 5 at 0 and 2).
    """
    order = np.argsort(ids, kind="stable")
    if not ids.size:
        return order, np.zeros(1, np.int64)
    starts = np.flatnonzero(ids[order][1:] != ids[order][:-1]) + 1
    return order, np.concatenate([[0], starts, [ids.size]]).astype(np.int64)


def embedding_backward(dout, cache):
    """(B, T, C) -> dwte (V, C), dwpe (block_size, C)."""
    ids, order, bounds, (B, T), wte_shape, wpe_shape, dtype = cache
    check_shape("embedding_backward", "dout", dout, (B, T, wte_shape[1]))
    device = on_device(dout)
    C = wte_shape[1]
    dout2 = to_device(dout).reshape(B * T, C)
    _, backward_wte, backward_wpe = _embedding_kernels(dtype.name)
    dwte = zeros(wte_shape, dtype)  # (the rows of tokens not in the batch stay zero)
    dwpe = zeros(wpe_shape, dtype)
    if dout2.size:
        _launch_1d(backward_wte, (bounds.size - 1) * C, ids, order, bounds, dout2, dwte)
        _launch_1d(backward_wpe, T * C, dout2, dwpe, B, T)
    return _answer(dwte, device), _answer(dwpe, device)


def _numba_type(dtype):
    from numba import float32, float64

    return float32 if np.dtype(dtype) == np.float32 else float64
