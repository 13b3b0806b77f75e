"""Hardware and model catalog: what a replica is made of.

A :class:`Deployment` is one model served on ``tp`` GPUs of one kind with tensor parallelism; it
knows how many tokens of KV cache fit beside the weights. Adding a GPU or a model is a few lines in
:data:`GPUS` / :data:`MODELS`; a model may also come from its Hugging Face ``config.json``
(:func:`model_from_hf_config`, :func:`resolve_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from slo.files import read_text

GiB = 1024**3
KiB = 1024

#: Memory each GPU keeps outside weights and KV cache: CUDA context, NCCL buffers, CUDA graphs and
#: the activations of the largest forward pass (vLLM measures this by a profiling run; ~1-3 GiB
#: for the models here).
ACTIVATION_RESERVE_BYTES_PER_GPU = 2 * GiB


@dataclass(frozen=True)
class GpuSpec:
    """One GPU and the share of its host that serves it.

    Parameters
    ----------
    name: catalog key.
    memory_bytes: HBM capacity.
    peak_flops: dense bf16 tensor-core peak (FLOP/s).
    hbm_bandwidth: HBM bandwidth (B/s).
    host_memory_bytes: host DRAM available to this GPU (node DRAM / GPUs per node).
    pcie_bandwidth: effective host<->GPU copy bandwidth of this GPU's link (B/s).
    host_memory_bandwidth: host DRAM bandwidth available to this GPU's CPU share (B/s), the
        limit of CPU-side decode attention over host-resident KV (NEO).
    cost_per_hour: on-demand price of one GPU (USD/h).
    calibrated: its step-time constants were fitted on profiles (``envs/sim/params``); an
        uncalibrated GPU runs on the spec-sheet roofline alone.
    interconnect_bandwidth: GPU-to-GPU bandwidth inside a node (B/s), what the roofline of an
        uncalibrated GPU's all-reduces needs (calibrated GPUs have fitted all-reduces).
    calibration_file: a user's calibration of this GPU (:mod:`envs.sim.calibration`), for a GPU
        outside the catalog calibrated on its own profiles.
    """

    name: str
    memory_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    host_memory_bytes: int
    pcie_bandwidth: float
    host_memory_bandwidth: float
    cost_per_hour: float
    calibrated: bool = True
    interconnect_bandwidth: float | None = None
    calibration_file: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer (Llama family: gated MLP, RMSNorm, rotary, optional GQA;
    or a plain two-matrix MLP as in GPT-NeoX or Phi).

    Parameters
    ----------
    name: catalog key.
    layers, hidden, heads, kv_heads, head_dim, mlp_hidden, vocab: architecture.
    dtype_bytes: bytes per weight and per KV element (2 = bf16/fp16).
    tied_embeddings: the LM head reuses the input embedding matrix (Llama-3.2 small models).
    gated_mlp: the MLP has a gate and an up projection (SwiGLU, GeGLU); else up only.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab: int
    dtype_bytes: int = 2
    tied_embeddings: bool = False
    gated_mlp: bool = True

    @property
    def layer_linear_params(self) -> dict[str, int]:
        """Weights of one layer's matrix multiplies, by operator (Vidur's operator names)."""
        q_out = self.heads * self.head_dim
        kv_out = 2 * self.kv_heads * self.head_dim
        return {
            "attn_pre_proj": self.hidden * (q_out + kv_out),  # fused QKV
            "attn_post_proj": q_out * self.hidden,
            "mlp_up_proj": self.hidden * (2 if self.gated_mlp else 1) * self.mlp_hidden,
            "mlp_down_proj": self.mlp_hidden * self.hidden,
        }

    @property
    def params(self) -> int:
        """Total parameter count."""
        per_layer = sum(self.layer_linear_params.values()) + 2 * self.hidden  # + two norms
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights."""
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one token over all layers (K and V)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class Deployment:
    """A model served on ``tp`` GPUs with tensor parallelism (one replica).

    Parameters
    ----------
    model, gpu: what runs on what.
    tp: tensor-parallel degree (GPUs per replica).
    gpu_memory_utilization: fraction of each GPU's memory the engine may use (vLLM's flag).
    block_tokens: tokens per KV-cache block (vLLM's ``block_size``).

    TP follows vLLM's rule: ``heads % tp == 0`` and either ``kv_heads % tp == 0`` or
    ``tp % kv_heads == 0``; in the second case each KV head is replicated on ``tp / kv_heads``
    GPUs, which costs KV memory (see :attr:`kv_bytes_per_token_per_gpu`).
    """

    model: ModelSpec
    gpu: GpuSpec
    tp: int = 1
    gpu_memory_utilization: float = 0.9
    block_tokens: int = 16

    def __post_init__(self) -> None:
        where = f"{self.model.name} on {self.tp} x {self.gpu.name}"
        if self.tp < 1:
            raise ValueError(f"{where}: tp must be >= 1, got {self.tp}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"{where}: gpu_memory_utilization must be in (0, 1], "
                f"got {self.gpu_memory_utilization}"
            )
        if self.block_tokens < 1:
            raise ValueError(f"{where}: block_tokens must be >= 1, got {self.block_tokens}")
        if self.model.heads % self.tp:
            raise ValueError(f"{where}: tp={self.tp} does not divide heads={self.model.heads}")
        kv = self.model.kv_heads
        if kv % self.tp and self.tp % kv:
            raise ValueError(
                f"{where}: tp={self.tp} neither divides nor is a multiple of kv_heads={kv}"
            )
        if self.kv_capacity_tokens < self.block_tokens:
            usable = self.tp * self._usable_bytes_per_gpu
            raise ValueError(
                f"{where}: weights ({self.model.weight_bytes / GiB:.1f} GiB) plus reserve "
                f"({self.tp * ACTIVATION_RESERVE_BYTES_PER_GPU / GiB:.1f} GiB) do not leave room "
                f"for one KV block in {usable / GiB:.1f} GiB usable "
                f"(gpu_memory_utilization={self.gpu_memory_utilization})"
            )

    @property
    def _usable_bytes_per_gpu(self) -> float:
        return self.gpu.memory_bytes * self.gpu_memory_utilization

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Weight bytes each GPU holds (tensor parallelism shards all matrices)."""
        return self.model.weight_bytes / self.tp

    @property
    def kv_heads_per_gpu(self) -> int:
        """KV heads stored on each GPU (at least one: vLLM replicates when tp > kv_heads)."""
        return max(self.model.kv_heads // self.tp, 1)

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        """KV bytes one token occupies on each GPU of the replica."""
        m = self.model
        return 2 * m.layers * self.kv_heads_per_gpu * m.head_dim * m.dtype_bytes

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the replica holds, rounded down to whole blocks (0 if none)."""
        free = (
            self._usable_bytes_per_gpu
            - self.weight_bytes_per_gpu
            - ACTIVATION_RESERVE_BYTES_PER_GPU
        )
        tokens = max(int(free // self.kv_bytes_per_token_per_gpu), 0)
        return tokens - tokens % self.block_tokens

    @property
    def kv_capacity_blocks(self) -> int:
        """KV-cache blocks of the replica."""
        return self.kv_capacity_tokens // self.block_tokens

    @property
    def cost_per_hour(self) -> float:
        """On-demand price of the replica's GPUs (USD/h)."""
        return self.tp * self.gpu.cost_per_hour


# Public spec-sheet numbers (SXM parts in 8-GPU DGX/HGX nodes). Host figures are per GPU: node
# DRAM and its bandwidth divided by 8. PCIe "effective" is ~80% of the link's theoretical rate.
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        # NVIDIA A100 datasheet: 80 GB HBM2e, 2,039 GB/s, 312 TFLOPS bf16 dense. DGX A100: 1 TB
        # DDR4 on 2x EPYC 7742 (8 x DDR4-3200 each = 409.6 GB/s), PCIe 4.0 x16 (32 GB/s).
        # Price: Azure ND96amsr A100 v4 pay-as-you-go $32.77/h for 8 GPUs.
        GpuSpec(
            name="a100-80gb",
            memory_bytes=80 * GiB,
            peak_flops=312e12,
            hbm_bandwidth=2.039e12,
            host_memory_bytes=128 * GiB,
            pcie_bandwidth=25e9,
            host_memory_bandwidth=409.6e9 / 8,
            cost_per_hour=4.10,
        ),
        # NVIDIA H100 SXM datasheet: 80 GB HBM3, 3.35 TB/s, 989 TFLOPS bf16 dense. DGX H100: 2 TB
        # DDR5 on 2x Xeon 8480C (8 x DDR5-4800 each = 614 GB/s), PCIe 5.0 x16 (64 GB/s).
        # Price: Azure ND96isr H100 v5 pay-as-you-go $98.32/h for 8 GPUs.
        GpuSpec(
            name="h100-80gb",
            memory_bytes=80 * GiB,
            peak_flops=989e12,
            hbm_bandwidth=3.35e12,
            host_memory_bytes=256 * GiB,
            pcie_bandwidth=50e9,
            host_memory_bandwidth=614.4e9 / 8,
            cost_per_hour=12.29,
        ),
    )
}

# Shapes from each model's Hugging Face config.json.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000),
        ModelSpec("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000),
        ModelSpec("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000),
        ModelSpec("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
        ModelSpec("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, tied_embeddings=True),
        ModelSpec("llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, tied_embeddings=True),
    )
}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def get_gpu(name: str) -> GpuSpec:
    """Return the GPU called ``name`` (case-insensitive); ValueError lists the known names."""
    return _lookup(GPUS, "GPU", name)


def get_model(name: str) -> ModelSpec:
    """Return the model called ``name`` (case-insensitive); ValueError lists the known names."""
    return _lookup(MODELS, "model", name)


def is_model_path(reference: str) -> bool:
    """Whether a model reference names a ``config.json`` file rather than a catalog entry."""
    return reference.endswith(".json") or "/" in reference


def resolve_model(reference: str) -> ModelSpec:
    """The model a pool names: a catalog name, or the path of a Hugging Face ``config.json``."""
    return model_from_hf_config(reference) if is_model_path(reference) else get_model(reference)


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json

#: ``model_type``s whose MLP is gated (gate and up projections: SwiGLU, GeGLU).
GATED_MLP_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2", "granite"}
)
#: ``model_type``s with a plain MLP (up projection, activation, down projection).
PLAIN_MLP_TYPES = frozenset({"gpt_neox", "phi", "starcoder2"})
#: ``model_type``s whose ``tie_word_embeddings`` defaults to true in transformers.
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "starcoder2"})
#: Keys that announce a mixture of experts (its expert weights are not modelled).
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
#: ``torch_dtype``s and the bytes vLLM serves them in (``--dtype auto`` runs float32 in 16 bits).
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 2}


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` of a Hugging Face ``config.json`` (dense decoder-only models).

    Reads ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
    ``num_key_value_heads`` (default: the attention heads, no GQA), ``head_dim`` (default
    ``hidden_size / num_attention_heads``), ``intermediate_size``, ``vocab_size``,
    ``tie_word_embeddings`` (default as in transformers for the ``model_type``) and
    ``torch_dtype``. The model is named after the folder holding the file. ValueError names the
    file and the field of anything missing, invalid or not modelled (mixtures of experts,
    quantised weights, unknown ``model_type``).
    """
    path = Path(path)
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config.json holds one JSON object")
    return _HfFields(path.resolve(), config).model_spec()


def read_json_file(path: str | Path) -> object:
    """The parsed content of a JSON file, cached by its path and modification time (parse it
    once however many pools name it); ValueError names the file that cannot be read, is not
    text or not JSON. The result is shared: never modify it."""
    path = Path(path)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return _cached_json(path.resolve(), mtime_ns)


@cache
def _cached_json(path: Path, mtime_ns: int) -> object:
    del mtime_ns  # part of the cache key only
    try:
        return json.loads(read_text(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


class _HfFields:
    """Reads the fields of one ``config.json``; every error names the file and the field."""

    def __init__(self, path: Path, config: dict) -> None:
        self.path, self.config = path, config

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {key}: {problem}")

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise self.error(key, "missing")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, f"must be a positive integer, got {value!r}")
        return value

    def model_type(self) -> str:
        kind = self.config.get("model_type")
        if kind not in GATED_MLP_TYPES | PLAIN_MLP_TYPES:
            known = ", ".join(sorted(GATED_MLP_TYPES | PLAIN_MLP_TYPES))
            raise self.error(
                "model_type", f"{kind!r} is not a supported model type; known: {known}"
            )
        return kind

    def refuse_unmodelled(self) -> None:
        for key in _EXPERT_KEYS:
            experts = self.config.get(key)
            if isinstance(experts, int) and experts > 1:
                raise self.error(key, f"a mixture of {experts} experts is not modelled")
        if self.config.get("quantization_config") is not None:
            raise self.error("quantization_config", "quantised weights are not modelled")

    def dtype_bytes(self) -> int:
        dtype = self.config.get("torch_dtype", "bfloat16")
        if dtype not in _DTYPE_BYTES:
            raise self.error("torch_dtype", f"{dtype!r} is not one of {', '.join(_DTYPE_BYTES)}")
        return _DTYPE_BYTES[dtype]

    def model_spec(self) -> ModelSpec:
        self.refuse_unmodelled()
        kind = self.model_type()
        hidden, heads = self.integer("hidden_size"), self.integer("num_attention_heads")
        if "head_dim" not in self.config and hidden % heads:
            raise self.error(
                "num_attention_heads", f"{heads} heads do not divide hidden_size={hidden}"
            )
        kv_heads = self.integer("num_key_value_heads", heads)
        if heads % kv_heads:
            raise self.error(
                "num_key_value_heads", f"{kv_heads} KV heads do not divide {heads} attention heads"
            )
        gated = kind in GATED_MLP_TYPES
        tied = self.config.get("tie_word_embeddings", kind in _TIED_BY_DEFAULT)
        return ModelSpec(
            name=self.path.parent.name.lower(),
            layers=self.integer("num_hidden_layers"),
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=self.integer("head_dim", hidden // heads),
            # GPT-NeoX-style configs may leave the MLP width at its conventional 4x.
            mlp_hidden=self.integer("intermediate_size", None if gated else 4 * hidden),
            vocab=self.integer("vocab_size"),
            dtype_bytes=self.dtype_bytes(),
            tied_embeddings=bool(tied),
            gated_mlp=gated,
        )
