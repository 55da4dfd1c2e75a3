"""Process-level settings for fast CPU inference: the allocator and torch.compile.

Decoding allocates and frees the same few tens of megabytes (activations of B x W beams, full-
vocabulary logits) every step. glibc serves blocks above its mmap threshold with fresh mmaps and
returns freed heap tops to the kernel, so every step page-faults its buffers in again: measured,
that is ~20 % of bf16 decode time (a ReLU over 128 x 81 x 1024 took 20 ms instead of 1 ms).
Raising both thresholds keeps the buffers in the heap and reused, what jemalloc/tcmalloc give
PyTorch without a preload.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import sys
import threading

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 256 << 20   # blocks below this come from the reusable heap
_TRIM_THRESHOLD = 512 << 20   # free memory kept at the heap top before returning it to the kernel
_tuned = False


def tune_allocator() -> bool:
    """Keep large tensor buffers in glibc's heap (idempotent). False where not glibc."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned


def compile_for_decoding(model, fullgraph: bool = False):
    """torch.compile the parts a decode runs per batch (`model.decoding_hot_paths`; TIGER: the
    encoder layers and `decode_step`; causal: the prefill `extend` and `decode_step`) with dynamic
    shapes, so one compilation serves every batch size and decode position. Fuses the norms,
    residual adds, casts and softmaxes between the matmuls (+25 % bf16 throughput on 2 cores,
    benchmarks/decode.py), for ~40-70 s of compilation on first use (cached by inductor on disk).

    A graph break silently sends the code after it back to eager (one in TIGER's attention cost
    15 %): the tests compile with `fullgraph=True`, where a break is an error. Serving keeps the
    default, where a shape past the recompile limit (each torch thread count gets its own graphs)
    runs eager instead of failing the request. Returns the model, changed in place."""
    import torch

    # One graph per decode level and cache state, for 1 and for more requests and beams (sizes 1
    # are specialised): TIGER needs 12 for decode_step, past dynamo's default limit of 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    # dynamic=True also makes every float the code reads (dropout p, norm eps, embedding norm_type)
    # a symbolic input that inductor cannot lower, and dynamo restarted those traces (causal's
    # prefill, TIGER's) with the floats fixed: 13-21 s a graph, the causal prefix-cache start-up
    # 268 -> 209 s on 2 cores with inductor's cache warm. They are constants: fix them at once.
    torch._dynamo.config.specialize_float = True
    # Duck shaping gives input sizes that happen to be equal when a graph is traced one symbol. In
    # the causal prefill the start-up walk's 2 cached prompts and the model's 2 key/value heads
    # became one size, pinned to 2, and the first batch of 3 cache hits recompiled under traffic.
    # The paths a model lists in `distinct_input_sizes` are traced with a symbol per size; only
    # those: tracing every path so took the compiled causal start-up from 145 to 327 s, and TIGER's
    # compiled batches of 3 ran 11 % slower.
    for name in model.decoding_hot_paths:
        compiled = torch.compile(getattr(model, name), dynamic=True, fullgraph=fullgraph)
        if name in getattr(model, "distinct_input_sizes", ()):
            compiled = _traced_without_duck_shapes(compiled)
        setattr(model, name, compiled)
    return model


def saved_traces_dir(scope: str) -> str:
    """Where `traces_kept_on_disk(scope)` keeps its packages: `genrec-<scope>` in
    `$GENREC_TRACE_CACHE_DIR`, by default in inductor's cache directory (`$TORCHINDUCTOR_CACHE_DIR/dynamo`)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    root = os.environ.get("GENREC_TRACE_CACHE_DIR") or os.path.join(cache_dir(), "dynamo")
    return os.path.join(root, f"genrec-{scope}")


@contextlib.contextmanager
def traces_kept_on_disk(scope: str, enabled: bool = True):
    """Within this block torch.compile loads what an earlier process traced for the same functions
    in the same `scope` (`whole_search.saved_trace_scope`), instead of tracing them again, and
    saves what it traced on leaving. Yields a function giving how many saved packages were loaded so far. Not `enabled`,
    it does nothing: for functions called under autocast, whose inputs' dispatch keys (with
    autocast's) a loaded package's guards refuse -- it would be traced again every time.

    inductor caches the kernels it generates on disk, but not dynamo's part: tracing the Python
    bytecode into graphs, most of a restart. Dynamo's precompile cache (`caching_precompile`) keeps
    the traced bytecode, its guards and the compiled graphs as pickles in `saved_traces_dir(scope)`:
    a machine-local cache as inductor's own, never a file a user hands us. Measured on 2 AVX2 cores
    (docs/serving.md), a restart then starts in 12-14 s instead of 193-378 (causal, prefix cache)
    and in 4-5 s instead of 55-59 (tiger's whole search). A traced start misses AOT autograd's
    cache (its key then holds a random name): a machine's first start with the prefix cache costs
    more (366-391 s).
    A package is found by the function's name and first line and refused when the source of any
    function it inlined changed; guards on sizes, dtypes and constants still apply, guards on
    object identity are dropped, which is what lets a new process's model reuse them: its weights
    are inputs of the graphs. Delete the directory to trace afresh.

    The scope keeps a package to the models it fits. Where its guards still fail, dynamo traces
    afresh; torch 2.13 then names the new trace's globals as an earlier process named those the
    package installed (a per-process counter from 0) and stops on the clash ("Name
    '__builtins_dict___0' already exists in scope"), so this block starts the counter at a random
    offset.

    A package keeps a graph only if AOT autograd's cache takes it, and that cache refuses any graph
    with an autocast block inside (bf16's fp32 logits, `layers.block_log_probs`): such a package
    had nothing to load. The block's entry and exit are graph ops whose arguments (device, dtype,
    enabled) are part of the graph and so of the cache key: marked cacheable here."""
    if not enabled:
        yield lambda: 0
        return
    import random

    import torch
    import torch._dynamo.bytecode_transformation as bytecode
    from torch._dynamo.package import DynamoCache
    from torch._dynamo.precompile_context import PrecompileContext
    from torch._dynamo.utils import counters

    bytecode._unique_id_counter = itertools.count(random.randrange(1 << 48))
    guards_log = logging.getLogger("torch._dynamo.guards")
    level = guards_log.level
    guards_log.setLevel(logging.ERROR)   # else one warning per identity guard dropped, hundreds
    directory = saved_traces_dir(scope)
    DynamoCache.path_prefix = lambda: directory   # the module's one store, pointed here for the block
    hits = counters["dynamo_cache"]["dynamo_cache_hit"]
    PrecompileContext.clear()   # the block saves what it traces, not what a call traced before (retrace_as_kept)
    try:
        autocast_ops = {f"torch.amp.autocast_mode.{op}": torch.__version__
                        for op in ("_enter_autocast", "_exit_autocast")}
        with torch._dynamo.config.patch(caching_precompile=True), \
                torch._inductor.config.patch(unsafe_marked_cacheable_functions=autocast_ops):
            yield lambda: counters["dynamo_cache"]["dynamo_cache_hit"] - hits
            try:
                PrecompileContext.save_to_dynamo_cache()
            except Exception as error:   # a cache: what was traced still runs, the next start traces again
                import warnings

                warnings.warn(f"could not save the compiled traces in {directory}: {error}", RuntimeWarning,
                              stacklevel=3)
    finally:
        PrecompileContext.clear()   # what this block traced is saved: later blocks save their own
        del DynamoCache.path_prefix
        guards_log.setLevel(level)


_retrace_lock = threading.Lock()
_retracing = 0           # calls inside `retrace_as_kept` now, over all threads
_retrace_restore = False  # caching_precompile as it was before the first of them


@contextlib.contextmanager
def retrace_as_kept():
    """Around calls, after start-up, of functions compiled in a `traces_kept_on_disk` block: a call
    that traces anew (a shape class the start-up walk did not compile) then traces as it would have
    in the block. Outside the block torch 2.13 keeps the identity guards the block drops (on the
    model's modules), cannot serialise them into the function's package, sets the package
    aside and then asserts that they were serialised ("check_fn.guards_state must not be None"):
    the call failed, and every later call of its class failed again after a new trace (~1 min on 2
    cores). The flag only decides how new traces are made; nothing is saved after the block. It is
    process-wide, so overlapping calls (engine threads) are counted: the last one out restores it."""
    global _retracing, _retrace_restore
    import torch

    with _retrace_lock:
        if _retracing == 0:
            _retrace_restore = torch._dynamo.config.caching_precompile
            torch._dynamo.config.caching_precompile = True
        _retracing += 1
    try:
        yield
    finally:
        with _retrace_lock:
            _retracing -= 1
            if _retracing == 0:
                torch._dynamo.config.caching_precompile = _retrace_restore


def _traced_without_duck_shapes(compiled):
    """`compiled`, traced with duck shaping off. The flag is process-wide and read while tracing,
    i.e. inside the call; calls after start-up trace nothing (the walk compiled every class)."""
    import functools

    import torch.fx.experimental._config as fx_config

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with fx_config.patch(use_duck_shape=False):
            return compiled(*args, **kwargs)

    return call


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype=None, device="cpu") -> float:
    """Measured FLOP/s of a large square matmul with the current thread setting (median): the
    machine's practical limit that MFU figures divide by. On CUDA each product is timed between
    synchronisations (kernels run asynchronously); pass a larger n there (8192)."""
    import statistics
    import time

    import torch

    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def bf16_is_native(device_type: str = "cpu") -> bool:
    """Whether bf16 matmuls have kernels of their own here: a CUDA GPU that supports bf16, or a
    CPU where oneDNN runs bf16 (AVX-512 and newer). On an AVX2-only CPU torch falls back to a
    scalar bf16 matmul: measured on a 2-core AMD EPYC (Zen 3), 1-2.5 GFLOP/s against fp32's
    68-141, so bf16 autocast makes training and decoding 20-50x slower instead of faster."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def usable_bf16(requested: bool, device_type: str = "cpu") -> bool:
    """`requested`, unless this device has no bf16 kernels: then fp32 (False), with a warning.
    bf16 is only ever asked for speed, and fp32 is the more exact of the two."""
    if not requested or bf16_is_native(device_type):
        return requested
    import warnings

    warnings.warn(f"bf16 was asked for, but this {device_type.upper()} has no bf16 matmul kernels (an AVX2-only "
                  "CPU: 20-50x slower than fp32); running in fp32", RuntimeWarning, stacklevel=2)
    return False
