"""Model hyper-parameters. Pure dataclasses: importing this never imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL_NAMES = ("lr", "mf", "dnn", "din", "eain")
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")
MASK_BLOCK_MODES = ("serial", "parallel")


@dataclass(kw_only=True)
class ModelConfig:
    """One flat section so that every knob is a `--set model.<key>=<value>` away.

    Defaults: DIN's attention unit, FuxiCTR's Amazon tower (512-128-64, no dropout) and softmax
    attention weights, chosen on Grocery's validation AUC (benchmarks/results/peer-parity.md). The `use_*` switches are EAIN's ablations; each one off removes its
    block (parameters and computation) from the model. DNN and DIN read only the shared keys
    (`embedding_dim`, `mlp_hidden`, `attention_hidden`, `dropout`, `mlp_batch_norm`, `l2`).
    """

    name: str = "eain"  # eain, din, dnn, mf, lr
    embedding_dim: int = 16

    # Towers (DIN's attention unit 80-40; FuxiCTR's Amazon prediction MLP 512-128-64). On
    # Grocery's validation AUC DIN's own 200-80 with dropout 0.1 was worse for DNN and EAIN,
    # and unnormalised attention weights (DIN's paper) worse than softmax for DIN.
    attention_hidden: list[int] = field(default_factory=lambda: [80, 40])
    attention_softmax: bool = True  # DIN attention weights normalised over the history (see din_attention.py)
    mlp_hidden: list[int] = field(default_factory=lambda: [512, 128, 64])
    dropout: float = 0.0
    mlp_batch_norm: bool = False
    # L2 of the objective, (λ / 2) ||w||² (eain_dist/model/loss.py): `l2` on the dense weight
    # matrices, `embedding_l2` on every row of every embedding table at every step (sharded
    # tables get it from their row-wise optimizer, lazily). The tables' L2 is what keeps
    # rarely seen ids from memorising their few rows (benchmarks/results/peer-parity.md).
    l2: float = 0.0
    embedding_l2: float = 0.005

    # EAIN blocks (ablation switches).
    use_din_attention: bool = True  # off: masked mean pooling of the history
    use_mask_block: bool = True
    use_senet: bool = True
    use_paim: bool = True
    use_second_order: bool = True

    # MaskBlock (MaskNet): aggregation layer = ratio x projection layer width.
    mask_block_count: int = 2
    mask_reduction_ratio: float = 2.0
    mask_block_hidden: int = 128
    mask_block_mode: str = "serial"  # serial (SerMaskNet) or parallel (ParaMaskNet)

    # SE-Net (FiBiNET): excitation width = fields / ratio.
    senet_reduction_ratio: float = 2.0

    # PAIM: positional encoding of history positions + feature-cross layers.
    positional_encoding: str = "sinusoidal"  # sinusoidal or learned
    cross_layers: int = 2


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError with a one-line message on the first bad value."""
    _check(cfg.name in MODEL_NAMES, f"model.name must be one of {', '.join(MODEL_NAMES)}, got {cfg.name!r}")
    _check(cfg.embedding_dim >= 1, f"model.embedding_dim must be >= 1, got {cfg.embedding_dim}")
    _check(len(cfg.attention_hidden) > 0 and all(width >= 1 for width in cfg.attention_hidden),
           f"model.attention_hidden needs at least one width, each >= 1, got {cfg.attention_hidden}")
    _check(all(width >= 1 for width in cfg.mlp_hidden), f"model.mlp_hidden widths must be >= 1, got {cfg.mlp_hidden}")
    _check(0.0 <= cfg.dropout < 1.0, f"model.dropout must be in [0, 1), got {cfg.dropout}")
    _check(cfg.l2 >= 0.0, f"model.l2 must be >= 0, got {cfg.l2}")
    _check(cfg.embedding_l2 >= 0.0, f"model.embedding_l2 must be >= 0, got {cfg.embedding_l2}")
    _check(cfg.mask_block_count >= 1, f"model.mask_block_count must be >= 1, got {cfg.mask_block_count}")
    _check(cfg.mask_reduction_ratio > 0.0, f"model.mask_reduction_ratio must be > 0, got {cfg.mask_reduction_ratio}")
    _check(cfg.mask_block_hidden >= 1, f"model.mask_block_hidden must be >= 1, got {cfg.mask_block_hidden}")
    _check(cfg.mask_block_mode in MASK_BLOCK_MODES,
           f"model.mask_block_mode must be one of {', '.join(MASK_BLOCK_MODES)}, got {cfg.mask_block_mode!r}")
    _check(cfg.senet_reduction_ratio > 0.0,
           f"model.senet_reduction_ratio must be > 0, got {cfg.senet_reduction_ratio}")
    _check(cfg.positional_encoding in POSITIONAL_ENCODINGS,
           f"model.positional_encoding must be one of {', '.join(POSITIONAL_ENCODINGS)}, "
           f"got {cfg.positional_encoding!r}")
    _check(cfg.cross_layers >= 0, f"model.cross_layers must be >= 0, got {cfg.cross_layers}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
