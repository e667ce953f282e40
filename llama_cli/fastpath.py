"""The CPU fast path: the same LLaMA forward pass with 4-bit weights and fewer, fused operations.

`make_fast(model, checkpoint)` returns a `FastTransformer` that shares the reference model's
embedding, norms and KV cache and replaces its linear layers:
- wq, wk, wv run as one matmul, and w1, w3 as another (fewer kernel calls per layer);
- 4-bit and 8-bit GGUF weights go to torch's int4 kernel as they are stored (quantize.py), with
  bfloat16 activations; the residual stream, norms, rotary embeddings, attention and KV cache
  stay float32;
- prompts (more than a few rows) run through a dense bfloat16 copy of the same weights;
- the output head is the int4 kernel's bfloat16 logits, with those within HEAD_MARGIN of the
  largest recomputed in float32 from the float32 head weights, so the tokens that can win greedy
  decoding (and carry nearly all the probability) get float32 logits. Logits of every position
  (perplexity) use the float32 head throughout.
The result is close to the float32 reference, not identical: bfloat16 rounds activations to 8
bits of mantissa. `--dtype float32` runs the reference model instead.

Packing takes a few seconds, so the packed weights are cached beside the converted GGUF
(weights/cache.py) in `fast-<key>.safetensors`, memory-mapped on later runs.

References: pytorch-labs/gpt-fast (fused wqkv, int4 weight-only linear), llama.cpp (block formats).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .model import Transformer
from .quantize import FOUR_BIT, PACKABLE, concat_rows, int4_linear, pack, pack_key, read_blocks
from .weights import CacheWarning, Checkpoint
from .weights.common import unpermute_qk

FAST_VERSION = 1  # bump when the packed file's contents change
SCRIPT_AFTER = 16  # decode calls run eagerly before the decode step is compiled with TorchScript (~0.2 s, once)
GEMV_ROWS = 16  # forward passes of up to this many rows (batch x tokens) use the int4 kernel, longer ones the dense copy
HEAD_MARGIN = 1.0  # head logits this close to the largest are recomputed in float32 (the int4 head is within ~0.1)
GROUPS = {  # fused matmul -> the internal weight names it stacks, in order
    "wqkv": ("attention.wq", "attention.wk", "attention.wv"),
    "wo": ("attention.wo",),
    "w13": ("feed_forward.w1", "feed_forward.w3"),
    "w2": ("feed_forward.w2",),
}
GGUF_LAYER_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
}  # fmt: skip


def fast_path_available() -> bool:
    """torch ships the CPU int4 kernel (2.6 and later)."""
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu")


def decode_layers(
    x: torch.Tensor,
    layers: list[list[torch.Tensor]],
    caches: list[list[torch.Tensor]],
    rope: torch.Tensor,
    mask: torch.Tensor | None,
    start: int,
    batch: int,
    n_heads: int,
    n_kv_heads: int,
    eps: torch.Tensor,
    doubled: bool,
    causal: bool,
) -> torch.Tensor:
    """Every layer for a few rows (decode): the int4 kernel, bfloat16 matmul inputs, float32 otherwise.

    x: (batch * T, dim) float32, the residual stream; rope: (T, head_dim, head_dim) rotations.
    RMSNorm's 1/rms scales each matmul's output rather than its input (the same product, fewer
    calls). Written for TorchScript as well as eager (annotated arguments, no closures).
    """
    H, KV, hd = n_heads, n_kv_heads, rope.shape[-1]
    rows, dim = x.shape[0], x.shape[1]
    T = rows // batch
    end = start + T
    buffer = torch.empty(rows, dim, dtype=torch.bfloat16)  # the bfloat16 input of the next matmul
    for i in range(len(layers)):
        w = layers[i]  # attention norm, ffn norm, then (packed, scales_zeros) of wqkv, wo, w13, w2
        k_cache, v_cache = caches[i][0], caches[i][1]
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        r = torch.rsqrt(torch.addcmul(eps, n, n, value=1.0 / dim))  # (rows, 1): 1 / rms
        qkv = (_int4(torch.mul(x, w[0], out=buffer), w[2], w[3], doubled) * r).view(batch, T, H + 2 * KV, hd)
        qk = torch.matmul(qkv[:, :, : H + KV], rope)  # (batch, T, H + KV, hd): rotary on q and k heads
        k_cache[:batch, :, start:end] = qk[:, :, H:].transpose(1, 2)  # (batch, KV, T, hd)
        v_cache[:batch, :, start:end] = qkv[:, :, H + KV :].transpose(1, 2)
        y = F.scaled_dot_product_attention(
            qk[:, :, :H].transpose(1, 2),
            k_cache[:batch, :, :end],
            v_cache[:batch, :, :end],
            attn_mask=mask,
            is_causal=causal,
            enable_gqa=KV != H,
        )  # (batch, H, T, hd)
        x = x + _int4(y.transpose(1, 2).reshape(rows, H * hd).to(torch.bfloat16), w[4], w[5], doubled)
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        r = torch.rsqrt(torch.addcmul(eps, n, n, value=1.0 / dim))
        gate_up = _int4(torch.mul(x, w[1], out=buffer), w[6], w[7], doubled) * r
        half = gate_up.shape[1] // 2
        act = torch.mul(F.silu(gate_up[:, :half]), gate_up[:, half:], out=torch.empty(rows, half, dtype=torch.bfloat16))
        x = x + _int4(act, w[8], w[9], doubled)
    return x


def _int4(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, doubled: bool) -> torch.Tensor:
    if doubled:  # 8-bit weights as two 4-bit halves (quantize.py)
        x = torch.cat((x, x), dim=-1)
    return torch._weight_int4pack_mm_for_cpu(x, packed, 32, scales_zeros)


class FastTransformer(Transformer):
    """A `Transformer` whose forward pass runs the fast path; caches and positions work as there.

    A decode step is bound as much by per-operation overhead (a few microseconds per tensor call,
    ~25 calls per layer) as by reading the weights, so the layers are written out as flat tensor
    calls over plain lists (`decode_layers`), compiled by TorchScript once a generation has run a
    few steps. Prompts go in chunks of `prefill_chunk` tokens: the attention kernel does not hold
    the scores in memory, and a prompt in one chunk needs no mask (a causal pass skips half the work).
    """

    prefill_chunk = 2048

    def __init__(
        self,
        model: Transformer,
        layers: list[tuple[torch.Tensor, ...]],
        head: tuple[torch.Tensor, ...],
        *,
        layers_doubled: bool,
        head_doubled: bool,
    ) -> None:
        nn.Module.__init__(self)  # the modules come from `model`, already loaded: nothing to initialise
        self.config = model.config
        self.tok_embeddings, self.layers, self.norm, self.output = model.tok_embeddings, model.layers, model.norm, model.output
        self.max_seq_len, self.max_batch = 0, 0
        # per layer: attention norm, ffn norm, (packed, scales_zeros) of wqkv, wo, w13, w2, then their dense copies
        self.fast_layers = layers
        self.fast_head = head  # (packed, scales_zeros), or (dense bfloat16,) when the file's head type cannot be packed
        self.layers_doubled, self.head_doubled = layers_doubled, head_doubled  # 8-bit weights: feed cat(x, x)
        self._caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._weights = [[norm1, norm2, *packed[:8]] for norm1, norm2, *packed in layers]  # decode_layers' view
        self._cache_list: list[list[torch.Tensor]] = []
        self._eps = torch.tensor(model.config.norm_eps)
        self._decode: Callable[..., torch.Tensor] = decode_layers
        self._decode_calls = 0
        half = self.config.head_dim // 2
        # Rotary embedding as a matmul: x @ (diag(cos) + ROTATE * sin) == x * cos + rotate_half(x) * sin.
        rotate = torch.zeros(self.config.head_dim, self.config.head_dim)
        rotate[torch.arange(half) + half, torch.arange(half)] = -1.0  # out[j] -= x[j + half] * sin[j], j < half
        rotate[torch.arange(half), torch.arange(half) + half] = 1.0  # out[j] += x[j - half] * sin[j], j >= half
        self.rotate = rotate

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        super().setup_cache(max_batch, max_seq_len)
        self._caches = [(layer.attention.kv_cache.k, layer.attention.kv_cache.v) for layer in self.layers]
        self._cache_list = [list(c) for c in self._caches]

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, *, last_only: bool = False) -> torch.Tensor:
        B, T = tokens.shape
        end = start_pos + T
        if self.max_seq_len == 0:  # the reference runs cache-free from position 0; here a cache is set up for it
            if start_pos:
                raise ValueError("start_pos > 0 needs a KV cache (call setup_cache first)")
            self.setup_cache(B, T)
        if end > self.max_seq_len or B > self.max_batch:
            raise ValueError(
                f"positions up to {end} with batch {B} exceed the cache ({self.max_seq_len} positions, batch {self.max_batch})"
            )
        mask = None
        causal = T > 1 and start_pos == 0  # a square causal mask: SDPA skips the masked blocks itself
        if T > 1 and not causal:  # query i (at start_pos+i) sees keys 0..start_pos+i
            key_pos = torch.arange(end, device=tokens.device)
            mask = key_pos[None, :] <= (start_pos + torch.arange(T, device=tokens.device))[:, None]  # (T, end)
        x = F.embedding(tokens.view(-1), self.tok_embeddings.weight)  # (B*T, dim) float32: the residual stream
        if B * T <= GEMV_ROWS:
            x = self._decode_layers(x, B, T, start_pos, mask, causal)
        else:
            x = self._prompt_layers(x, B, T, start_pos, mask, causal)
        x = x.view(B, T, -1)
        if last_only:
            x = x[:, -1:]
        x = F.rms_norm(x, (self.config.dim,), self.norm.weight, self.config.norm_eps)
        head = self.tok_embeddings.weight if self.output is None else self.output.weight
        return self._head(x, head) if last_only else F.linear(x, head)

    def _decode_layers(self, x: torch.Tensor, B: int, T: int, start: int, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        cfg = self.config
        rope = torch.diag_embed(self.rope_cos[start : start + T]) + self.rotate * self.rope_sin[start : start + T, None, :]  # (T, hd, hd)
        self._decode_calls += 1
        if self._decode_calls == SCRIPT_AFTER:
            self._decode = _scripted(decode_layers)
        return self._decode(
            x, self._weights, self._cache_list, rope, mask, start, B, cfg.n_heads, cfg.n_kv_heads, self._eps, self.layers_doubled, causal
        )

    def _prompt_layers(self, x: torch.Tensor, B: int, T: int, start: int, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Many rows: dense bfloat16 matmuls (oneDNN), elementwise work in bfloat16 where it feeds one."""
        cfg = self.config
        H, KV, hd, dim, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim, cfg.norm_eps
        end = start + T
        bf16 = torch.bfloat16
        cos, sin = self.rope_cos[start:end, None], self.rope_sin[start:end, None]  # (T, 1, hd)
        half = hd // 2
        for (norm1, norm2, *_, wqkv, wo, w13, w2), (k_cache, v_cache) in zip(self.fast_layers, self._caches):
            qkv = F.linear(F.rms_norm(x, (dim,), norm1, eps).to(bf16), wqkv).float().view(B, T, H + 2 * KV, hd)
            qk = qkv[:, :, : H + KV]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin  # rotary, "rotate half" layout
            k_cache[:B, :, start:end] = qk[:, :, H:].transpose(1, 2)
            v_cache[:B, :, start:end] = qkv[:, :, H + KV :].transpose(1, 2)
            y = F.scaled_dot_product_attention(
                qk[:, :, :H].transpose(1, 2),
                k_cache[:B, :, :end],
                v_cache[:B, :, :end],
                attn_mask=mask,
                is_causal=causal,
                enable_gqa=KV != H,
            )
            x = x + F.linear(y.transpose(1, 2).reshape(B * T, H * hd).to(bf16), wo)
            gate, up = F.linear(F.rms_norm(x, (dim,), norm2, eps).to(bf16), w13).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w2)
        return x

    def _head(self, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, vocab): bfloat16 ones for all, float32 for those within HEAD_MARGIN of the largest."""
        h = x.view(-1, x.shape[-1]).to(torch.bfloat16)
        if len(self.fast_head) == 2:
            logits = int4_linear(h, *self.fast_head, doubled=self.head_doubled)
        else:
            logits = F.linear(h, self.fast_head[0])
        logits = logits.float().view(x.shape[0], 1, -1)
        near = (logits >= logits.amax(dim=-1, keepdim=True) - HEAD_MARGIN).nonzero(as_tuple=True)  # (b, 0, token) triples
        exact = (head[near[2]] * x[near[0], near[1]]).sum(dim=-1)  # (candidates,) float32 dot products
        return logits.index_put_(near, exact)


# ---------------------------------------------------------------- building and caching the weights


def make_fast(model: Transformer, checkpoint: Checkpoint, *, cache: bool = True) -> FastTransformer | None:
    """The fast model for a GGUF of packable tensors (Q4_0, Q4_1, Q8_0); None for anything else.

    Reads `fast-<key>.safetensors` from the converted-weights cache when it is there; otherwise
    packs (a few seconds, said on stderr) and writes it, unless `cache` is False.
    """
    if checkpoint.format != "gguf" or not fast_path_available() or model.tok_embeddings.weight.device.type != "cpu":
        return None
    from .weights.gguf_header import scan_header

    path = Path(checkpoint.source)
    file = _cache_file(path) if cache else None
    tensors = _read_cache(file) if file is not None else None
    if tensors is None:
        header = scan_header(path)
        linear = [t for name, t in header.tensors.items() if name.startswith("blk.") and len(t.shape) == 2]
        if not linear or any(t.type.name not in PACKABLE for t in linear):
            return None  # K-quants, float files: the reference model (no half-fast path)
        if sys.stderr.isatty():  # a note for people waiting; pipes and scripts get only errors and warnings
            print(f"llama: packing {checkpoint.quantization} weights for the int4 kernel (once per model file)", file=sys.stderr, flush=True)
        tensors = _pack_all(model, header, path)
        if file is not None:
            _write_cache(file, tensors)
    layers = []
    for i in range(model.config.n_layers):
        attention, feed_forward = model.layers[i].attention_norm.weight, model.layers[i].ffn_norm.weight
        packed = [t for g in GROUPS for t in (tensors[f"layers.{i}.{g}.packed"], tensors[f"layers.{i}.{g}.scales_zeros"])]
        layers.append((attention, feed_forward, *packed, *(tensors[f"layers.{i}.{g}.dense"] for g in GROUPS)))
    head = (tensors["head.packed"], tensors["head.scales_zeros"]) if "head.packed" in tensors else (tensors["head.dense"],)
    head_doubled = bool(tensors["head.doubled"].item()) if "head.doubled" in tensors else False
    return FastTransformer(model, layers, head, layers_doubled=bool(tensors["layers.doubled"].item()), head_doubled=head_doubled)


def _pack_all(model: Transformer, header, path: Path) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Every fused matmul as packed int4 (decode) and dense bfloat16 (prompts); the head as int4 if it can be.

    When any layer tensor is 8-bit, every layer matmul takes the doubled form (quantize.py), so
    one flag says how to feed them all.
    """
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    reference = model.state_dict()
    qk_rows = {  # GGUF stores q/k rows interleaved; the model wants "rotate half" (weights/common.py)
        "attention.wq": unpermute_qk(torch.arange(cfg.n_heads * cfg.head_dim)[:, None], cfg.n_heads)[:, 0],
        "attention.wk": unpermute_qk(torch.arange(cfg.n_kv_heads * cfg.head_dim)[:, None], cfg.n_kv_heads)[:, 0],
    }
    infos = {
        (i, name): header.tensors[f"blk.{i}.{GGUF_LAYER_NAMES[name]}.weight"] for i in range(cfg.n_layers) for name in GGUF_LAYER_NAMES
    }
    doubled = any(info.type.name not in FOUR_BIT for info in infos.values())
    for i in range(cfg.n_layers):
        for group, names in GROUPS.items():
            parts = []
            for name in names:
                info = infos[i, name]
                blocks = read_blocks(path, info.offset, info.n_bytes, info.type.name, info.shape)
                blocks = blocks.as_doubled() if doubled else blocks
                parts.append(blocks.rows(qk_rows[name]) if name in qk_rows else blocks)
            out[f"layers.{i}.{group}.packed"], out[f"layers.{i}.{group}.scales_zeros"] = pack(concat_rows(parts))
            out[f"layers.{i}.{group}.dense"] = torch.cat([reference[f"layers.{i}.{n}.weight"] for n in names]).to(torch.bfloat16)
    out["layers.doubled"] = torch.tensor(doubled)
    info = header.tensors["token_embd.weight" if cfg.tie_embeddings else "output.weight"]
    if info.type.name in PACKABLE:
        blocks = read_blocks(path, info.offset, info.n_bytes, info.type.name, info.shape)
        out["head.packed"], out["head.scales_zeros"] = pack(blocks)
        out["head.doubled"] = torch.tensor(blocks.doubled)
    else:  # e.g. Q6_K: a dense bfloat16 head (twice the bytes of 8-bit), still refined in float32 near the top
        out["head.dense"] = reference["tok_embeddings.weight" if cfg.tie_embeddings else "output.weight"].to(torch.bfloat16)
    return out


def _cache_file(gguf_path: Path) -> Path | None:
    from .weights.cache import cache_key, entry_path

    entry = entry_path(cache_key(gguf_path), gguf_path)
    if not entry.is_dir():
        return None
    digest = hashlib.sha256(f"{FAST_VERSION} {pack_key()}".encode()).hexdigest()[:12]
    return entry / f"fast-{digest}.safetensors"


def _read_cache(file: Path) -> dict[str, torch.Tensor] | None:
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("llama", "{}")).get("pack_key") != pack_key():
                return None
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except (SafetensorError, OSError, ValueError) as exc:
        warnings.warn(CacheWarning(f"ignoring unreadable {file} ({exc}); packing again"), stacklevel=3)
        return None


def _write_cache(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically (temporary file, then rename); a failure costs a warning, not the run."""
    try:
        fd, temp = tempfile.mkstemp(prefix=".tmp-fast-", dir=file.parent)
        os.close(fd)
        try:
            save_file(tensors, temp, metadata={"llama": json.dumps({"pack_key": pack_key(), "version": FAST_VERSION})})
            os.replace(temp, file)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    except (OSError, SafetensorError) as exc:
        warnings.warn(
            CacheWarning(f"cannot cache the packed weights in {file.parent} ({exc}); they will be packed again next run"), stacklevel=3
        )


@functools.cache
def _scripted(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` compiled by TorchScript (about half the per-call overhead), or as it is if that fails.

    TorchScript is deprecated in favour of torch.compile, which needs a C++ compiler and seconds
    to minutes per process start; this needs neither. Once per process.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(function)
    except Exception:  # noqa: BLE001 (no source in a frozen app, a torch without TorchScript: eager gives the same results)
        return function
